// What `dptrain train` tells its user around the training itself: the short banner at start and
// the command that continues a stopped run. Pure functions of the facts they are given, so tests
// check them directly; train_command.cpp gathers the facts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dptrain::cli {

/// Everything the start-up banner shows.
struct BannerFacts {
  std::string config_name;    ///< "mnist_cnn"
  std::string config_source;  ///< the file it came from
  int64_t parameters = 0;
  std::string device;         ///< "cuda, NVIDIA H200" or "cpu, 2 threads"
  std::string precision;      ///< "float32" or "tf32"
  int ranks = 1;
  std::string exchange;       ///< the communicator's name ("nccl", "mpi"; unused on one rank)
  int64_t global_batch = 0;
  int64_t per_rank_batch = 0;
  int64_t steps_per_epoch = 0;
  int epochs = 0;
  int64_t max_steps = 0;      ///< 0: none
  std::string data_dir;
  int64_t train_images = 0;
  int64_t test_images = 0;
  std::string run_dir;
};

/// The banner: six lines, the first naming the config, the others indented.
std::string run_banner(const BannerFacts& facts);

/// The command line that continues a stopped run. `argv` is the process's (argv[0] as the user
/// typed it, then "train" and its flags); `launcher` the script that started it, as shell text
/// (DPTRAIN_LAUNCHER, which launch/train.sh, train_mpi.sh and slurm.sbatch set), or empty;
/// `mpirun` the prefix of an MPI job started by hand ("mpirun -np 4"), or empty. The run's own
/// flags follow the launcher or `<argv[0]> train`, any --resume becomes `--resume auto`, and --out
/// names the run folder. Arguments the shell would split or expand are single-quoted.
std::string resume_command(const std::vector<std::string>& argv, const std::string& launcher,
                           const std::string& mpirun, const std::string& run_dir);

/// The process's command line; main() records it before parsing.
void set_command_line(int argc, const char* const* argv);
const std::vector<std::string>& command_line();

/// `1234567` -> "1,234,567".
std::string with_thousands(int64_t n);

}  // namespace dptrain::cli
