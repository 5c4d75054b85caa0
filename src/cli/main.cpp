// dptrain's entry point: parses the command line, runs one subcommand, and turns every failure
// into one line on stderr and an exit status: 0 success, 2 bad usage or bad input (flags, config,
// data, checkpoint), 1 anything else.
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <new>
#include <string>

#include "cli/commands.h"
#include "cli/run_messages.h"
#include "core/error.h"
#include "cpu/threads.h"
#include "train/startup_timer.h"

int main(int argc, char** argv) {
  dptrain::note_main_entered();  // the start-up breakdown's clock starts here (train/startup_timer.h)
  // OpenBLAS picks its kernels when it loads; if it fell back to the generic ones on a capable CPU,
  // start again with the right ones named (once: the variable is then set).
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr) {
    const std::string core = dptrain::better_blas_coretype();
    if (!core.empty() && setenv("OPENBLAS_CORETYPE", core.c_str(), 1) == 0) execv("/proc/self/exe", argv);
  }
  dptrain::cli::set_command_line(argc, argv);  // for messages that show a command to run again
  CLI::App app{"dptrain: data-parallel CNN training on GPUs (cuDNN, cuBLAS, NCCL) and CPUs", "dptrain"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("dptrain 0.1.0"));
  std::map<CLI::App*, dptrain::cli::Command> commands;
  for (auto add : {dptrain::cli::add_train, dptrain::cli::add_eval, dptrain::cli::add_predict, dptrain::cli::add_bench,
                    dptrain::cli::add_inspect, dptrain::cli::add_plot}) {
    // Each adder creates its subcommand last; find it by position.
    dptrain::cli::Command run = add(app);
    commands[app.get_subcommands({}).back()] = std::move(run);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  try {
    for (CLI::App* sub : app.get_subcommands()) return commands.at(sub)();
    return 2;
  } catch (const dptrain::InputError& e) {
    std::fprintf(stderr, "dptrain: error: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "dptrain: error: out of host memory: the batch sizes (train.batch_size, "
                         "train.eval_batch_size, --batch-size) or the model's layers need more than this machine has\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dptrain: error: %s\n", e.what());
    return 1;
  }
}
