// dptrain bench: times training steps (after warm-up) of a config on one device and prints one
// JSON object, the format bench/pytorch_reference.py prints too, so the two compare directly.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <limits>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "comm/communicator.h"
#include "core/device_ops.h"
#include "cpu/threads.h"
#if DPTRAIN_HAVE_CUDA
#include "core/cuda_context.h"
#endif
#include "data/dataset.h"
#include "io/config.h"
#include "train/background_load.h"
#include "train/runtime.h"
#include "train/startup_timer.h"
#include "train/trainer.h"

namespace dptrain::cli {

namespace {

struct BenchArgs {
  std::string config = "configs/mnist_cnn.yaml";
  std::string data;
  std::string device = "auto";
  int steps = 200;
  int warmup = 20;
  int batch = 0;
  int threads = 0;
  std::vector<std::string> sets;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

int run_bench(const BenchArgs& a) {
  StartupTimer startup;  // from main: the same breakdown as `dptrain train`, until the first step
  startup.mark("command_line");
  std::vector<std::string> overrides = a.sets;
  if (a.batch > 0) overrides.push_back("train.batch_size=" + std::to_string(a.batch));
  if (!a.data.empty()) overrides.push_back("data.dir=" + a.data);
  overrides.push_back("train.epochs=1000");
  const Config config = load_config(a.config, overrides);
  startup.mark("config");
  const Device device = resolve_device(a.device);
  configure_cpu_threads(a.threads);
  BackgroundLoad<MnistData> loading([dir = config.data.dir] { return load_mnist_dir(dir); });
  DeviceContext ctx = make_device_context(device, config.train);
  mark_device_startup(ctx, startup);
  const MnistData data = loading.get(&startup, "data_read");
  SingleRankCommunicator comm;
  TrainOptions options;
  options.show_progress = false;
  options.startup = &startup;
  Trainer trainer(config, options, data, ctx, comm);

  // Steps are timed in groups so that on the GPU the timer does not serialise every step.
  const int group = device == Device::Cuda ? 20 : 1;
  const int groups = std::max(1, a.steps / group);
  int64_t step = 0;
  auto run_steps = [&](int n) {
    for (int i = 0; i < n; ++i, ++step) trainer.step(step / trainer.steps_per_epoch(), step % trainer.steps_per_epoch(), step);
  };
  run_steps(a.warmup);
  synchronize(ctx);
  startup.finish();  // the first step (and the capture) are in it; a warm-up of 0 steps leaves them out
  std::vector<double> ms;
  for (int g = 0; g < groups; ++g) {
    const auto t0 = std::chrono::steady_clock::now();
    run_steps(group);
    synchronize(ctx);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / group);
  }
  const double med = median(ms);
  const auto [lo, hi] = std::minmax_element(ms.begin(), ms.end());
  std::string device_label = "cpu";
  std::vector<std::string> choices;  // what the CUDA layers chose by measurement
#if DPTRAIN_HAVE_CUDA
  if (device == Device::Cuda) device_label = ctx.cuda().device_name(), choices = ctx.cuda().choices();
#endif
  const nlohmann::json j = {
      {"impl", "dptrain"},
      {"config", config.name},
      {"device", device_label},
      {"threads", device == Device::Cpu ? cpu_threads() : 0},
      {"precision", config.train.precision},
      {"cuda_graph", device == Device::Cuda && config.train.cuda_graph},
      {"batch", config.train.batch_size},
      {"steps", groups * group},
      {"ms_per_step", med},
      {"ms_per_step_min", *lo},
      {"ms_per_step_max", *hi},
      {"images_per_second", med > 0 ? 1000.0 * config.train.batch_size / med : 0.0},
      {"choices", choices},
      {"startup", startup.to_json()}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace

Command add_bench(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* sub = app.add_subcommand("bench", "Time training steps of a config and print one JSON object");
  sub->add_option("--config", args->config, "Config file")->default_val("configs/mnist_cnn.yaml");
  sub->add_option("--data", args->data, "MNIST folder (overrides data.dir)");
  sub->add_option("--device", args->device, "cpu, cuda or auto")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  sub->add_option("--steps", args->steps, "Timed steps")->check(CLI::Range(1, std::numeric_limits<int>::max()));
  sub->add_option("--warmup", args->warmup, "Untimed warm-up steps")
      ->check(CLI::Range(0, std::numeric_limits<int>::max()));
  sub->add_option("--batch-size", args->batch, "Global batch (overrides train.batch_size)")
      ->check(CLI::Range(1, std::numeric_limits<int>::max()));
  sub->add_option("--threads", args->threads, "CPU backend threads")->check(CLI::Range(0, kMaxCpuThreads));
  sub->add_option("--set", args->sets, "Override a config key (repeatable)");
  return [args] { return run_bench(*args); };
}

}  // namespace dptrain::cli
