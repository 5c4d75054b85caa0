// A run folder's checkpoints: ckpt-<step, 8+ digits>.safetensors files rotated to the newest
// `keep`, a `latest` file naming the newest, and best.safetensors; and `--resume auto`, which
// finds the newest checkpoint there that loads.
//
// Invariants: every write is atomic (io/atomic_file.h), and `latest` is rewritten only after the
// file it names is complete, and old files are deleted only after that, so an interrupted save
// leaves the previous state usable. Rotation never deletes the file `latest` names nor
// best.safetensors. Reading the folder (resolve_auto, list_steps) never changes it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "io/checkpoint_format.h"

namespace dptrain {

class CheckpointDir {
 public:
  /// keep >= 1: how many ckpt-* files survive rotation.
  CheckpointDir(std::string folder, int keep);

  const std::string& folder() const { return folder_; }
  std::string step_path(int64_t step) const;
  std::string best_path() const;
  std::string latest_path() const;
  /// The run's end-of-training weights (final.safetensors: weights and state, no optimizer).
  std::string final_path() const;

  /// Writes ckpt-<step>, then points `latest` at it, then deletes the oldest ckpt-* files beyond
  /// `keep` (never the one `latest` names, never best.safetensors). Creates the folder if needed.
  /// Returns the path written.
  std::string save(int64_t step, const std::vector<NamedTensor>& model,
                   const std::vector<NamedTensor>& optimizer_state, const CheckpointState& state);

  /// Writes best.safetensors (a full checkpoint). Returns its path.
  std::string save_best(const std::vector<NamedTensor>& model, const std::vector<NamedTensor>& optimizer_state,
                        const CheckpointState& state);
  /// The same, where save() has just written these tensors and state to `saved_step_file`:
  /// best.safetensors becomes a hard link to it (written in full where links are not possible).
  std::string save_best(const std::string& saved_step_file, const std::vector<NamedTensor>& model,
                        const std::vector<NamedTensor>& optimizer_state, const CheckpointState& state);

  struct Resolved {
    std::optional<std::string> path;    ///< newest valid checkpoint, if any
    std::vector<std::string> warnings;  ///< one line per file skipped and why, for the caller to print
  };
  /// `--resume auto`: tries the file `latest` names, then the ckpt-* files from the highest step
  /// down, and returns the first that load_checkpoint accepts. Reads only; never throws for bad
  /// files (they become warnings).
  Resolved resolve_auto() const;

  /// A run resumed at `step` into this folder continues from there: ckpt-* files of later steps
  /// (from the run it abandoned, or a save that was interrupted) would count against `keep` and
  /// make rotation delete this run's own files, and `--resume auto` could later pick one. They
  /// move into the subfolder `set-aside-<step>` (nothing is deleted). Returns the names moved.
  std::vector<std::string> set_aside_after(int64_t step);

  /// (step, path) of the ckpt-* files present, by ascending step.
  std::vector<std::pair<int64_t, std::string>> list_steps() const;

 private:
  std::string folder_;
  int keep_;
};

}  // namespace dptrain
