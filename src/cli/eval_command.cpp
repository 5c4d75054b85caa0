// dptrain eval: test-set accuracy and mean loss of a weights file or checkpoint.
#include <cstdio>
#include <memory>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "comm/communicator.h"
#include "data/dataset.h"
#include "train/evaluator.h"
#include "train/plan_sharing.h"
#include "train/runtime.h"
#include "train/weights.h"

namespace dptrain::cli {

namespace {

struct EvalArgs {
  std::string checkpoint;
  std::string data;
  std::string device = "auto";
  int batch = 1000;
  bool json = false;
};

int run_eval(const EvalArgs& a) {
  const Device device = resolve_device(a.device);
  DeviceContext ctx = make_device_context(device, TrainConfig{});
  LoadedModel loaded = load_model(a.checkpoint, ctx, a.batch);
  const std::string dir = a.data.empty() ? loaded.config.data.dir : a.data;
  const Dataset test = load_mnist_test(dir);
  check_labels(test, loaded.config.model.num_classes);
  check_image_size(test, loaded.config.model.input);
  Evaluator evaluator(test, loaded.config.data, a.batch, ctx);
  // The plan cache (train.plan_cache's default, auto) spares a warm start the timed planning.
  SingleRankCommunicator single;
  plan_on_every_rank(single, ctx, {TrainConfig{}.plan_cache, "", false}, [&](bool) {
    for (int n : evaluator.batch_sizes()) loaded.model->plan(ctx, n, /*backward=*/false);
  });
  const EvalResult r = evaluator.run(*loaded.model, ctx);
  if (a.json) {
    const nlohmann::json j = {{"checkpoint", a.checkpoint}, {"data", dir},       {"device", device_name(device)},
                              {"samples", r.count},         {"correct", r.correct}, {"test_accuracy", r.accuracy},
                              {"test_loss", r.loss}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s on %s (%lld images): test_accuracy %.2f%% (%lld correct), test_loss %.4f\n", a.checkpoint.c_str(),
                dir.c_str(), static_cast<long long>(r.count), 100.0 * r.accuracy, static_cast<long long>(r.correct), r.loss);
  }
  return 0;
}

}  // namespace

Command add_eval(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* sub = app.add_subcommand("eval", "Test-set accuracy and loss of a weights file or checkpoint");
  sub->add_option("--checkpoint", args->checkpoint, "Weights file or checkpoint (.safetensors)")->required();
  sub->add_option("--data", args->data, "Folder with t10k-images/labels (default: the config's data.dir)");
  sub->add_option("--device", args->device, "cpu, cuda or auto")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  sub->add_option("--batch-size", args->batch, "Evaluation batch")->check(CLI::PositiveNumber);
  sub->add_flag("--json", args->json, "Print one JSON object");
  return [args] { return run_eval(*args); };
}

}  // namespace dptrain::cli
