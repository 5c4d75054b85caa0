// The checkpoint and weights file formats: what dptrain writes, and the loaders that hand a file
// out only once it is fully validated (io/checkpoint_validation.h says what valid means).
//
// A checkpoint is a safetensors file (io/safetensors.h): model tensors under their state_dict
// names ("conv1.weight"), optimizer state under "optimizer.<param>.<slot>"
// ("optimizer.conv1.weight.square_avg"), all F32 except state counters (batchnorm's
// "<name>.num_batches_tracked", I64 as in PyTorch's state_dict), and string metadata:
//   format="dptrain-checkpoint", format_version="1", dptrain_version, config (resolved YAML),
//   epoch, global_step, samples_in_epoch, seed, world_size, scheduler (JSON object text),
//   best_test_accuracy (%.17g), epoch_metrics (JSON object text), and three checksums (lower-case hex SHA-256):
//   data_sha256    over the whole data section;
//   tensor_sha256  JSON object text {name: sha256 of that tensor's bytes} (lets inspect say which
//                  tensor is damaged);
//   header_sha256  over safetensors_header_json(tensor table, metadata without header_sha256),
//                  i.e. over every tensor name, dtype, shape, offset and every other metadata
//                  value, including the two checksums above.
// The loader also requires the header to be byte-for-byte in the writer's canonical form, so a
// change that keeps the JSON meaning (a padding space flipped to a tab) is caught too. Together:
// any change to any byte of a checkpoint is reported as InputError(path, problem).
//
// A weights file (final.safetensors) uses the same layout and checksums with only model tensors
// and format="dptrain-weights", format_version, dptrain_version and config; PyTorch's
// safetensors.torch.load_file reads both kinds unchanged (metadata is ignored there).
//
// Invariants: every file written here carries all three checksums and is written atomically
// (io/atomic_file.h); a LoadedCheckpoint or LoadedWeights exists only for a file that passed every
// check.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/safetensors.h"

namespace dptrain {

/// Written into every file; compared by nothing (informational).
inline constexpr std::string_view kDptrainVersion = "0.1.0";
inline constexpr std::string_view kCheckpointFormat = "dptrain-checkpoint";
inline constexpr std::string_view kWeightsFormat = "dptrain-weights";
inline constexpr std::string_view kFormatVersion = "1";

/// Training progress saved with the tensors.
struct CheckpointState {
  std::string config_yaml;        ///< the resolved config
  int64_t epoch = 0;              ///< 0-based epoch in progress
  int64_t global_step = 0;        ///< optimizer steps taken so far
  int64_t samples_in_epoch = 0;   ///< samples of `epoch` already consumed (all ranks together)
  uint64_t seed = 0;
  int world_size = 1;
  std::string scheduler_json = "{}";  ///< a JSON object (e.g. {"last_lr": 0.5})
  double best_test_accuracy = 0.0;    ///< any finite value (the trainer decides the scale)
  std::string epoch_metrics_json = "{}";  ///< a JSON object: the current epoch's running sums
  friend bool operator==(const CheckpointState&, const CheckpointState&) = default;
};

/// Elements of a tensor of `shape` (1 for a scalar's []).
inline int64_t element_count_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

/// Host copy of one tensor to save: `values` holds element_count(shape) floats, row-major.
struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> values;
  /// Whole numbers written as I64 (batchnorm's num_batches_tracked, as PyTorch stores it).
  bool integer = false;
};

/// "optimizer.<param>.<slot>"
std::string optimizer_tensor_name(std::string_view param, std::string_view slot);

/// Writes a checkpoint atomically (io/atomic_file.h). Every optimizer tensor name must start with
/// "optimizer." and no model tensor's may; a wrong size or duplicate name is
/// std::invalid_argument (a caller bug), an I/O failure std::runtime_error.
void save_checkpoint(const std::string& path, const std::vector<NamedTensor>& model,
                     const std::vector<NamedTensor>& optimizer_state, const CheckpointState& state);

/// The file image save_checkpoint writes (for tests and fuzz seeds).
std::vector<uint8_t> serialize_checkpoint(const std::vector<NamedTensor>& model,
                                          const std::vector<NamedTensor>& optimizer_state,
                                          const CheckpointState& state);

/// A validated dptrain file's tensors, read by name and shape: what checkpoints and weights files
/// share.
struct LoadedTensors {
  std::string path;
  SafeTensorsFile file;  ///< validated

  /// F32 values of `name` (an I64 state counter converted); InputError(path, "tensor 'name' is
  /// missing / has shape ...").
  std::vector<float> tensor(std::string_view name, const std::vector<int64_t>& expected_shape) const {
    std::vector<float> values(static_cast<size_t>(element_count_of(expected_shape)));
    file.copy_f32_or_i64(name, expected_shape, values);
    return values;
  }
  /// As tensor(), into `out` (element_count(expected_shape) floats).
  void copy_tensor(std::string_view name, const std::vector<int64_t>& expected_shape, std::span<float> out) const {
    file.copy_f32(name, expected_shape, out);
  }
  /// As copy_tensor(), also accepting an I64 tensor (a state counter), converted.
  void copy_state_tensor(std::string_view name, const std::vector<int64_t>& expected_shape, std::span<float> out) const {
    file.copy_f32_or_i64(name, expected_shape, out);
  }
  /// InputError(path, ...) naming the first tensor the file lacks or has beyond `expected` (e.g.
  /// a checkpoint of another model or optimizer).
  void check_tensor_names(const std::vector<std::string>& expected) const;
};

/// A checkpoint: model and optimizer tensors, and the state to resume from.
struct LoadedCheckpoint : LoadedTensors {
  CheckpointState state;
  std::string dptrain_version;  ///< of the writer
};

/// Reads and fully validates a checkpoint: structure, format and version, checksums, required
/// metadata and its values. Throws InputError(path, problem).
LoadedCheckpoint load_checkpoint(const std::string& path);

/// The validation of load_checkpoint on an already parsed file.
LoadedCheckpoint checkpoint_from_file(SafeTensorsFile file);

/// Weights only (final.safetensors); atomic.
void save_weights(const std::string& path, const std::vector<NamedTensor>& model, const std::string& config_yaml);

/// A weights file (or a checkpoint's model tensors): what `eval`, `predict` and PyTorch read.
struct LoadedWeights : LoadedTensors {
  std::string config_yaml;
};

/// Reads a weights file or a checkpoint (whose optimizer tensors are dropped), fully validated.
LoadedWeights load_weights(const std::string& path);

}  // namespace dptrain
