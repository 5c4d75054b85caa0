// Resuming a run: which checkpoint `--resume` means, and whether the config it is resumed with
// may continue it. A checkpoint holds everything about where the run stands (train/trainer.h reads
// it); the schedule and the data order are pure functions of the seed and the step, so nothing
// else is needed to continue exactly.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "io/config.h"

namespace dptrain {

/// `--resume auto`: the newest checkpoint of `run_dir` that validates; each file skipped on the way
/// adds a line to `warnings`. nullopt when the folder holds none.
std::optional<std::string> find_resume_checkpoint(const std::string& run_dir, int keep, std::vector<std::string>& warnings);

/// Whether `run_dir` already holds a run's files that a fresh run there would overwrite: `latest`,
/// ckpt-* files (loadable or not), final.safetensors or best.safetensors.
bool holds_a_run(const std::string& run_dir);

/// Compares the config a checkpoint was written with (`saved`) to the one the run resumes with.
/// A different model or optimizer type is InputError(path, ...) listing every difference; any
/// other change is allowed and returned as one line each, saying whether it changes the training
/// itself (then the continuation is no longer the uninterrupted run).
std::vector<std::string> check_resume_config(const Config& saved, const Config& now, const std::string& path);

}  // namespace dptrain
