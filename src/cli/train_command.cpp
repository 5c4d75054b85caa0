// dptrain train: builds the model from a config and trains it on the chosen device. A failure of
// the run (a numerical blow-up under --check-numerics included) exits 1; bad input exits 2.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>

#include "cli/commands.h"
#include "comm/bootstrap.h"
#include "comm/communicator.h"
#include "comm/gradient_reducer.h"
#include "cuda/cuda_context.h"
#include "core/error.h"
#include "data/dataset.h"
#include "io/config.h"
#include "train/runtime.h"
#include "train/trainer.h"

namespace dptrain::cli {

namespace {

struct TrainArgs {
  std::string config;
  std::string data;
  std::string out;
  std::string device = "auto";
  std::optional<uint64_t> seed;
  std::optional<int> epochs;
  std::optional<int64_t> max_steps;
  std::vector<std::string> sets;
  std::string comm;
  int threads = 0;
  bool no_progress = false;
  bool check_numerics = false;
  bool profile = false;
};

/// The flags that are shorthands for config keys become overrides, applied after --set.
std::vector<std::string> overrides_of(const TrainArgs& a) {
  std::vector<std::string> o = a.sets;
  if (!a.data.empty()) o.push_back("data.dir=" + a.data);
  if (a.seed) o.push_back("train.seed=" + std::to_string(*a.seed));
  if (a.epochs) o.push_back("train.epochs=" + std::to_string(*a.epochs));
  if (a.max_steps) o.push_back("train.max_steps=" + std::to_string(*a.max_steps));
  if (!a.comm.empty()) o.push_back("comm.backend=" + a.comm);
  if (a.check_numerics) o.push_back("train.check_numerics=true");
  return o;
}

void prepare_run_folder(const std::string& out, const Config& config) {
  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  if (ec) throw InputError(out, "cannot create the run folder: " + ec.message());
  std::ofstream(std::filesystem::path(out) / "config.yaml") << to_yaml(config);
  std::ofstream metrics(std::filesystem::path(out) / "metrics.jsonl", std::ios::trunc);
  if (!metrics) throw InputError(out, "cannot write metrics.jsonl in the run folder");
}

int train_on_rank(const TrainArgs& args, const MpiSession& mpi) {
  const Config config = load_config(args.config, overrides_of(args));
  const std::string out = args.out.empty() ? "runs/" + config.name : args.out;
  const Device device = resolve_device(args.device);
  configure_cpu_threads(args.threads);
  const int gpu = device == Device::Cuda ? choose_gpu(mpi.local_rank(), cuda_device_count()) : 0;
  DeviceContext ctx = make_device_context(device, config.train, gpu);
  std::unique_ptr<Communicator> comm =
      make_communicator(parse_comm_kind(config.comm.backend), device, mpi, gpu, config.comm.timeout_s);
  const MnistData data = load_mnist_dir(config.data.dir);
  if (comm->rank() == 0) {
    prepare_run_folder(out, config);
    std::printf("dptrain train: config %s, device %s, %d rank(s) over %s, run folder %s\n%s", config.source.c_str(),
                std::string(device_name(device)).c_str(), comm->size(), std::string(comm->name()).c_str(), out.c_str(),
                to_yaml(config).c_str());
    std::fflush(stdout);
  }
  comm->barrier();  // the run folder exists before any rank goes on
  TrainOptions options;
  options.out_dir = out;
  options.show_progress = !args.no_progress;
  options.profile = args.profile;
  std::unique_ptr<Trainer> trainer;
  std::unique_ptr<GradientReducer> reducer;
  if (comm->size() > 1) {
    // The reducer needs the model's gradient buffer, so the trainer is built first without it.
    trainer = std::make_unique<Trainer>(config, options, data, ctx, *comm, nullptr);
    reducer = std::make_unique<GradientReducer>(*comm, ctx, trainer->model().params().grads().span(),
                                                GradientReducerOptions{config.comm.bucket_mb, config.comm.overlap});
    trainer->set_gradient_hook(reducer.get());
  } else {
    trainer = std::make_unique<Trainer>(config, options, data, ctx, *comm, nullptr);
  }
  const TrainSummary s = trainer->run();
  if (comm->rank() == 0)
    std::printf("done: %lld steps, test_accuracy %.2f%%, test_loss %.4f, %.0f images/s; weights in %s/final.safetensors\n",
                static_cast<long long>(s.steps), 100.0 * s.final_eval.accuracy, s.final_eval.loss, s.images_per_second,
                out.c_str());
  return 0;
}

/// Runs this rank; a failure on any rank prints one line naming the rank and ends the whole job.
int run_train(const TrainArgs& args) {
  MpiSession mpi;
  const std::string who = mpi.size() > 1 ? "rank " + std::to_string(mpi.rank()) + ": " : "";
  int code = 0;
  try {
    return train_on_rank(args, mpi);
  } catch (const InputError& e) {
    std::fprintf(stderr, "dptrain: error: %s%s\n", who.c_str(), e.what());
    code = 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dptrain: error: %s%s\n", who.c_str(), e.what());
    code = 1;
  }
  std::fflush(stderr);
  if (mpi.size() > 1) mpi.abort_job(code);  // the others may be waiting in a collective
  return code;
}

}  // namespace

Command add_train(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* sub = app.add_subcommand("train", "Train a model described by a config file");
  sub->add_option("--config", args->config, "Config file (configs/*.yaml)")->default_val("configs/mnist_cnn.yaml");
  sub->add_option("--data", args->data, "Folder with the MNIST-layout IDX files (overrides data.dir)");
  sub->add_option("--out", args->out, "Run folder (default runs/<config name>)");
  sub->add_option("--device", args->device, "cpu, cuda or auto")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  sub->add_option("--seed", args->seed, "Random seed (overrides train.seed)");
  sub->add_option("--epochs", args->epochs, "Epochs (overrides train.epochs)")->check(CLI::PositiveNumber);
  sub->add_option("--max-steps", args->max_steps, "Stop after this many steps (overrides train.max_steps)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--set", args->sets, "Override a config key: --set train.batch_size=128 (repeatable)");
  sub->add_option("--comm", args->comm, "Gradient exchange across ranks: auto, nccl or mpi (overrides comm.backend)")
      ->check(CLI::IsMember({"auto", "nccl", "mpi"}));
  sub->add_option("--threads", args->threads, "CPU backend threads (default: all cores)")->check(CLI::NonNegativeNumber);
  sub->add_flag("--no-progress", args->no_progress, "No progress bar or progress lines");
  sub->add_flag("--check-numerics", args->check_numerics,
                "Debug: stop at the first NaN/Inf in any layer's output, gradients, the loss or the parameters "
                "(overrides train.check_numerics; no CUDA graph, one device sync per step)");
  sub->add_flag("--profile", args->profile,
                "Time each layer and stage per step (after 5 warm-up steps), print a table at the end and write "
                "profile.json to the run folder; NVTX ranges for Nsight Systems (no CUDA graph)");
  return [args] { return run_train(*args); };
}

}  // namespace dptrain::cli
