// dptrain eval: test-set accuracy and mean loss of a weights file or checkpoint.
//
// Start-up does only what evaluation needs: the weights file and the test set are read (and
// validated, decompressed) on a thread while the device starts; the model is built forward-only
// (no gradient buffers, no optimizer state, no communicator); exactly the batch sizes the pass
// runs are planned, forward only, before it. With --profile the start-up breakdown
// (train/startup_timer.h) is printed, and --json carries it as "startup".
//
// Planning seam: the context is made with today's default settings (TrainConfig{}: timed planning
// on), so a persistent plan cache keyed by those settings, filled by training's evaluation at the
// same batch size, serves these plans without timing them again.
#include <cstdio>
#include <limits>
#include <memory>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "comm/communicator.h"
#include "data/dataset.h"
#include "train/background_load.h"
#include "train/evaluator.h"
#include "train/plan_sharing.h"
#include "train/runtime.h"
#include "train/startup_timer.h"
#include "train/timed_planning.h"
#include "train/weights.h"

namespace dptrain::cli {

namespace {

struct EvalArgs {
  std::string checkpoint;
  std::string data;
  std::string device = "auto";
  int batch = 1000;
  bool json = false;
  bool profile = false;
};

/// What evaluation reads from files: the weights (with their config) and the test set.
struct EvalInputs {
  WeightsFile weights;
  std::string dir;  // the data folder used: --data, else the config's data.dir
  Dataset test;
};

EvalInputs read_inputs(const EvalArgs& a) {
  EvalInputs in{read_weights_file(a.checkpoint), "", Dataset{}};  // the weights first, as their errors come first
  in.dir = a.data.empty() ? in.weights.config.data.dir : a.data;
  in.test = load_mnist_test(in.dir);
  return in;
}

int run_eval(const EvalArgs& a) {
  StartupTimer startup;
  startup.mark("command_line");
  const Device device = resolve_device(a.device);
  BackgroundLoad<EvalInputs> reading([a] { return read_inputs(a); });
  DeviceContext ctx = make_device_context(device, TrainConfig{});
  mark_device_startup(ctx, startup);
  const EvalInputs in = reading.get(&startup, "weights_and_data_read");
  const Config& config = in.weights.config;
  check_labels(in.test, config.model.num_classes);
  check_image_size(in.test, config.model.input);
  const int batch = Evaluator::batch_for(a.batch, in.test);
  const LoadedModel loaded = build_model(in.weights, ctx, batch, /*forward_only=*/true);
  startup.mark("model_build");
  Evaluator evaluator(in.test, config.data, batch, ctx);
  startup.mark("data_upload");
  // The plan cache (train.plan_cache's default, auto) spares a warm start the timed planning.
  SingleRankCommunicator single;
  plan_on_every_rank(single, ctx, {TrainConfig{}.plan_cache, "", false}, [&](bool) {
    for (int n : evaluator.batch_sizes()) plan_model(*loaded.model, ctx, n, /*backward=*/false, &startup);
  });
  if (ctx.on_cuda()) startup.mark("planning");  // the CPU plans nothing
  const EvalResult r = evaluator.run(*loaded.model, ctx);
  startup.mark("evaluation");
  startup.finish();
  if (a.json) {
    nlohmann::json j = {{"checkpoint", a.checkpoint}, {"data", in.dir},       {"device", device_name(device)},
                        {"samples", r.count},         {"correct", r.correct}, {"test_accuracy", r.accuracy},
                        {"test_loss", r.loss}};
    j["startup"] = startup.to_json();
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s on %s (%lld images): test_accuracy %.2f%% (%lld correct), test_loss %.4f\n", a.checkpoint.c_str(),
                in.dir.c_str(), static_cast<long long>(r.count), 100.0 * r.accuracy, static_cast<long long>(r.correct),
                r.loss);
  }
  if (a.profile) std::fputs(startup.table("start-up until the result").c_str(), stdout);
  return 0;
}

}  // namespace

Command add_eval(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* sub = app.add_subcommand("eval", "Test-set accuracy and loss of a weights file or checkpoint");
  sub->add_option("--checkpoint", args->checkpoint, "Weights file or checkpoint (.safetensors)")->required();
  sub->add_option("--data", args->data, "Folder with t10k-images/labels (default: the config's data.dir)");
  sub->add_option("--device", args->device, "cpu, cuda or auto")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  sub->add_option("--batch-size", args->batch, "Evaluation batch")
      ->check(CLI::Range(1, std::numeric_limits<int>::max()));
  sub->add_flag("--json", args->json, "Print one JSON object");
  sub->add_flag("--profile", args->profile, "Print where the time went from process start to the result");
  return [args] { return run_eval(*args); };
}

}  // namespace dptrain::cli
