// dptrain train: builds the model from a config and trains it on the chosen device. A failure of
// the run (a numerical blow-up under --check-numerics, or a diverged loss: train/divergence.h,
// included) exits 1; bad input exits 2. Rank 0 prints a short banner (cli/run_messages.h; the
// resolved config only with --verbose), keeps curves.png in the run folder (io/curves.h) and, after
// a stop, names the command that continues the run.
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/run_messages.h"
#include "comm/bootstrap.h"
#include "comm/communicator.h"
#include "core/cuda_support.h"  // cuda_device_count
#include "core/error.h"
#include "cpu/threads.h"
#if DPTRAIN_HAVE_CUDA
#include "core/cuda_context.h"  // the GPU's name, for the banner
#endif
#include "data/dataset.h"
#include "io/atomic_file.h"
#include "io/config.h"
#include "io/checkpoint.h"
#include "io/curves.h"
#include "layers/layer_factory.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "train/background_load.h"
#include "train/preemption.h"
#include "train/resume.h"
#include "train/runtime.h"
#include "train/startup_timer.h"
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
  bool config_given = false;  // --config on the command line (else a resumed run keeps its own)
  std::string resume;         // PATH or "auto"
  std::string inject_failure; // RANK:STEP, for tests of failure handling
  bool check_numerics = false;
  bool profile = false;
  bool verbose = false;       // print the resolved config at start
  bool sync_checkpoints = false;  // write checkpoints on the training thread (tests, comparison)
  int64_t inject_write_failure = -1;  // the checkpoint of this step fails to write (tests)
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

/// Writes config.yaml and starts metrics.jsonl; a run resumed from step `resumed_step` (-1: a fresh
/// run) keeps the lines up to that step (later ones came from steps it will take again).
void prepare_run_folder(const std::string& out, const Config& config, int64_t resumed_step) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) throw InputError(out, "cannot create the run folder: " + ec.message());
  const std::vector<std::string> stale = remove_stale_temp_files(out);
  if (!stale.empty())
    std::fprintf(stderr, "dptrain: warning: %s: removed %zu temp file(s) of an interrupted write (%s%s)\n", out.c_str(),
                 stale.size(), stale.front().c_str(), stale.size() > 1 ? ", ..." : "");
  const fs::path metrics_path = fs::path(out) / "metrics.jsonl";
  std::string kept;
  if (resumed_step >= 0) {
    std::ifstream in(metrics_path);
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.value("step", int64_t{0}) <= resumed_step) kept += line + "\n";
    }
  }
  // Replaced whole, never truncated in place: a failure here leaves the earlier lines.
  try {
    write_file_atomically((fs::path(out) / "config.yaml").string(), to_yaml(config));
    write_file_atomically(metrics_path.string(), kept);
  } catch (const std::runtime_error& e) {
    throw InputError(std::string(e.what()) + " (the run folder --out names)");
  }
}

/// The run's config and, when resuming, its checkpoint (validated) and what changed since.
struct RunSetup {
  Config config;
  std::string out;
  std::optional<LoadedCheckpoint> checkpoint;
  std::vector<std::string> notes;  // for rank 0 to print
};

RunSetup resolve_run(const TrainArgs& args) {
  RunSetup run;
  const std::vector<std::string> overrides = overrides_of(args);
  if (args.resume.empty() || args.resume == "auto" || args.config_given) run.config = load_config(args.config, overrides);
  std::string path = args.resume;
  if (args.resume == "auto") {
    run.out = args.out.empty() ? "runs/" + run.config.name : args.out;
    std::vector<std::string> warnings;
    const std::optional<std::string> found = find_resume_checkpoint(run.out, run.config.checkpoint.keep, warnings);
    for (const std::string& w : warnings) run.notes.push_back("resume: skipped " + w);
    if (!found) {
      // Starting afresh would overwrite them: damaged checkpoints are still someone's run.
      if (holds_a_run(run.out))
        throw InputError(run.out, "--resume auto found no checkpoint that loads" +
                                      (warnings.empty() ? std::string() : " (" + warnings.front() + ")") +
                                      ", and a fresh start would overwrite the run's files there: move them away or "
                                      "train into another folder (--out)");
      run.notes.push_back("resume: no checkpoint in " + run.out + ", starting from the beginning");
      return run;
    }
    path = *found;
  } else if (!args.resume.empty()) {
    run.out = args.out.empty() ? std::filesystem::path(path).parent_path().string() : args.out;
    if (run.out.empty()) run.out = ".";
  }
  if (path.empty()) {
    run.out = args.out.empty() ? "runs/" + run.config.name : args.out;
    if (holds_a_run(run.out))
      throw InputError(run.out, "already holds a run (checkpoints or weights): continue it with --resume auto, or "
                                "train into another folder (--out) or remove this one");
    return run;
  }
  run.checkpoint = load_checkpoint(path);
  const Config saved = parse_config(run.checkpoint->state.config_yaml, path + " (embedded config)");
  if (!args.config_given && args.resume != "auto")
    run.config = parse_config(run.checkpoint->state.config_yaml, path + " (embedded config)", overrides);
  for (const std::string& change : check_resume_config(saved, run.config, path)) run.notes.push_back("resume: changed " + change);
  const CheckpointState& st = run.checkpoint->state;
  run.notes.push_back("resume: from " + path + " at step " + std::to_string(st.global_step) + " (epoch " +
                      std::to_string(st.epoch + 1) + ", " + std::to_string(st.samples_in_epoch) +
                      " samples into it), written by " + std::to_string(st.world_size) + " rank(s)");
  return run;
}

/// Parameters of the model `config` describes, from its layers' shapes (nothing is allocated).
int64_t parameter_count(const ModelConfig& config) {
  int64_t count = 0;
  Dims dims = config.input;
  for (size_t i = 0; i < config.layers.size(); ++i) {
    const auto layer = make_layer<float>(config.layers[i], static_cast<int>(i), dims, Device::Cpu);
    for (const ParamSpec& spec : layer->param_specs()) count += element_count(spec.shape);
    dims = layer->output_dims();
  }
  return count;
}

BannerFacts banner_facts(const Config& config, const std::string& out, Device device, const DeviceContext& ctx,
                         const Communicator& comm, const MnistData& data) {
  BannerFacts f;
  f.config_name = config.name;
  f.config_source = config.source;
  f.parameters = parameter_count(config.model);
  f.device = "cpu, " + std::to_string(cpu_threads()) + " thread(s)";
  f.precision = "float32";
#if DPTRAIN_HAVE_CUDA
  if (device == Device::Cuda) f.device = "cuda, " + ctx.cuda().device_name(), f.precision = config.train.precision;
#else
  (void)device, (void)ctx;
#endif
  f.ranks = comm.size();
  f.exchange = std::string(comm.name());
  const TrainConfig& t = config.train;
  f.global_batch = t.batch_per_rank > 0 ? int64_t{t.batch_per_rank} * comm.size() : t.batch_size;
  f.per_rank_batch = (f.global_batch + comm.size() - 1) / comm.size();
  f.steps_per_epoch = (data.train.count + f.global_batch - 1) / f.global_batch;
  f.epochs = t.epochs;
  f.max_steps = t.max_steps;
  f.data_dir = config.data.dir;
  f.train_images = data.train.count;
  f.test_images = data.test.count;
  f.run_dir = out;
  return f;
}

/// How to continue this run after a stop: the command it was started with (the launcher script
/// when one says so through DPTRAIN_LAUNCHER, else this binary as invoked, under mpirun when Open
/// MPI started several ranks), with --resume auto.
std::string resume_hint(const std::string& out, int ranks) {
  const char* launcher = std::getenv("DPTRAIN_LAUNCHER");
  const bool open_mpi = std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr;
  const std::string mpirun = ranks > 1 && open_mpi ? "mpirun -np " + std::to_string(ranks) : "";
  return resume_command(command_line(), launcher != nullptr ? launcher : "", mpirun, out);
}

/// "RANK:STEP" -> the step after which this rank fails, or -1.
int64_t failure_step_for(const std::string& spec, int rank) {
  if (spec.empty()) return -1;
  const size_t colon = spec.find(':');
  try {
    if (colon == std::string::npos) throw std::invalid_argument(spec);
    return std::stoi(spec.substr(0, colon)) == rank ? std::stoll(spec.substr(colon + 1)) : -1;
  } catch (const std::exception&) {
    throw InputError("--inject-failure", "'" + spec + "' is not RANK:STEP");
  }
}

/// The optimizer's and schedule's own rules (optim/), checked before anything starts, with the
/// config's name: not after the banner, from the trainer, naming only the key.
void check_recipe(const Config& config) {
  try {
    (void)make_optimizer(scheduled_optimizer(config.train.optimizer, config.train.schedule), Device::Cpu, 0);
    (void)LrSchedule(config.train.schedule, config.train.optimizer.lr, /*steps_per_epoch=*/1, config.train.epochs);
  } catch (const InputError& e) {
    throw InputError(config.source, e.what());
  }
}

int train_on_rank(const TrainArgs& args, MpiSession& mpi, StartupTimer& startup) {
  RunSetup run = resolve_run(args);
  check_recipe(run.config);
  const Config& config = run.config;
  const std::string& out = run.out;
  startup.mark(run.checkpoint ? "config_and_checkpoint" : "config");
  const Device device = resolve_device(args.device);
  configure_cpu_threads(args.threads);
  // The data is read and decompressed on a thread of its own while the device starts.
  BackgroundLoad<MnistData> loading([dir = config.data.dir] { return load_mnist_dir(dir); });
  const int gpu = device == Device::Cuda ? choose_gpu(mpi.local_rank(), cuda_device_count()) : 0;
  DeviceContext ctx = make_device_context(device, config.train, gpu);
  mark_device_startup(ctx, startup);
  const CommKind comm_kind = parse_comm_kind(config.comm.backend);
  if (!mpi.started() && communicator_needs_mpi(comm_kind, device, mpi.size())) {  // one process, comm.backend mpi or nccl
    mpi.start();
    startup.mark("mpi_init");
  }
  std::unique_ptr<Communicator> comm = make_communicator(comm_kind, device, mpi, gpu, config.comm.timeout_s);
  if (comm->size() > 1) startup.mark("communicator");  // one rank has none to set up
  const MnistData data = loading.get(&startup, "data_read");
  const int64_t resumed_step = run.checkpoint ? run.checkpoint->state.global_step : -1;
  if (comm->rank() == 0) {
    prepare_run_folder(out, config, resumed_step);
    std::fputs(run_banner(banner_facts(config, out, device, ctx, *comm, data)).c_str(), stdout);
    if (args.verbose) std::printf("resolved config:\n%s", to_yaml(config).c_str());
    for (const std::string& note : run.notes) std::printf("%s\n", note.c_str());
    std::fflush(stdout);
  }
  comm->barrier();  // the run folder exists before any rank goes on
  startup.mark("run_folder");
  TrainOptions options;
  options.startup = &startup;
  options.async_checkpoints = !args.sync_checkpoints;
  options.fail_checkpoint_write_at_step = args.inject_write_failure;
  options.out_dir = out;
  options.show_progress = !args.no_progress;
  options.resume = run.checkpoint ? &*run.checkpoint : nullptr;
  options.fail_after_step = failure_step_for(args.inject_failure, comm->rank());
  options.profile = args.profile;
  CurvesKeeper curves(out);  // rank 0 keeps curves.png current
  if (comm->rank() == 0) options.after_epoch = [&curves](double seconds) { curves.after_epoch(seconds); };
  Trainer trainer(config, options, data, ctx, *comm);  // with its gradient exchange on several ranks
  const PreemptionSignals signals;
  const TrainSummary s = trainer.run();
  if (comm->rank() != 0) return 0;
  curves.at_end();
  if (s.preempted) {
    const int sig = preemption_signal();
    const std::string why =
        sig == kLauncherGoneSignal ? "because the MPI launcher ended" : "by signal " + std::to_string(sig);
    std::printf("preempted %s at step %lld; checkpoint %s\nresume with: %s\n", why.c_str(),
                static_cast<long long>(s.steps), s.checkpoint.c_str(), resume_hint(out, comm->size()).c_str());
  } else if (s.steps == s.first_step) {
    std::printf("nothing to do: the run is already at step %lld (raise --epochs or --max-steps to continue it)\n",
                static_cast<long long>(s.steps));
  } else {
    std::printf("done: %lld steps, test_accuracy %.2f%%, test_loss %.4f, %.0f images/s; checkpoint %s; weights in "
                "%s/final.safetensors\n",
                static_cast<long long>(s.steps), 100.0 * s.final_eval.accuracy, s.final_eval.loss, s.images_per_second,
                s.checkpoint.c_str(), out.c_str());
  }
  std::fflush(stdout);
  return 0;
}

/// Runs this rank; a failure on any rank prints one line naming the rank and ends the whole job.
int run_train(const TrainArgs& args) {
  StartupTimer startup;  // from main (train/startup_timer.h)
  startup.mark("command_line");
  // A process no launcher started needs no MPI unless its config asks for it (MpiSession::Start).
  MpiSession mpi(nullptr, nullptr, MpiSession::Start::WhenLaunched);
  if (mpi.started()) startup.mark("mpi_init");
  const std::string who = mpi.size() > 1 ? "rank " + std::to_string(mpi.rank()) + ": " : "";
  int code = 0;
  try {
    return train_on_rank(args, mpi, startup);
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
  sub->add_option("--config", args->config, "Config file (configs/*.yaml); a resumed run keeps its own unless given")
      ->default_val("configs/mnist_cnn.yaml")
      ->each([args](const std::string&) { args->config_given = true; });
  sub->add_option("--data", args->data, "Folder with the MNIST-layout IDX files (overrides data.dir)");
  sub->add_option("--out", args->out, "Run folder (default runs/<config name>)");
  sub->add_option("--device", args->device, "cpu, cuda or auto")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  sub->add_option("--seed", args->seed, "Random seed (overrides train.seed)")
      ->check(CLI::Validator(
          [](std::string& value) {  // CLI11 reads "-1" into an unsigned as 2^64 - 1
            return value.starts_with('-') ? "Value " + value + " is negative" : std::string();
          },
          "", "not negative"));
  sub->add_option("--epochs", args->epochs, "Epochs (overrides train.epochs)")
      ->check(CLI::Range(1, std::numeric_limits<int>::max()));
  sub->add_option("--max-steps", args->max_steps, "Stop after this many steps (overrides train.max_steps)")
      ->check(CLI::Validator(
          [](std::string& value) {  // CLI11 would read a number past 2^63 - 1 as 2^63 - 1
            int64_t steps = 0;
            const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), steps);
            if (ec == std::errc::result_out_of_range) return "Value " + value + " is too large";
            return ec == std::errc() && steps < 0 ? "Value " + value + " is negative" : std::string();
          },
          "", "not negative"));
  sub->add_option("--set", args->sets, "Override a config key: --set train.batch_size=128 (repeatable)");
  sub->add_option("--comm", args->comm, "Gradient exchange across ranks: auto, nccl or mpi (overrides comm.backend)")
      ->check(CLI::IsMember({"auto", "nccl", "mpi"}));
  sub->add_option("--threads", args->threads, "CPU backend threads (default: all cores)")
      ->check(CLI::Range(0, kMaxCpuThreads));
  sub->add_flag("--no-progress", args->no_progress, "No progress bar or progress lines");
  sub->add_flag("--verbose", args->verbose, "Also print the resolved config (always written to config.yaml)");
  sub->add_option("--resume", args->resume,
                  "Continue from a checkpoint: a ckpt-*.safetensors file, or 'auto' for the newest valid one in the run folder");
  sub->add_option("--inject-failure", args->inject_failure, "RANK:STEP: that rank fails after that step (tests)")
      ->group("");  // hidden: for testing how the job ends when a rank fails
  sub->add_flag("--check-numerics", args->check_numerics,
                "Debug: stop at the first NaN/Inf in any layer's output, gradients, the loss or the parameters "
                "(overrides train.check_numerics; no CUDA graph, one device sync per step)");
  sub->add_flag("--profile", args->profile,
                "Time each layer and stage per step (after 5 warm-up steps), print a table at the end and write "
                "profile.json to the run folder; NVTX ranges for Nsight Systems (no CUDA graph); also the epoch "
                "ends' and the start-up's times");
  sub->add_flag("--sync-checkpoints", args->sync_checkpoints,
                "Write checkpoint files on the training thread instead of a background writer (for comparison)")
      ->group("");  // hidden: the asynchronous writer is the normal path
  sub->add_option("--inject-write-failure", args->inject_write_failure, "STEP: writing that step's checkpoint fails (tests)")
      ->group("");  // hidden: for testing how a failed checkpoint write ends the run
  return [args] { return run_train(*args); };
}

}  // namespace dptrain::cli
