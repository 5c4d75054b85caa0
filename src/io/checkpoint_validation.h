// What makes a dptrain file (checkpoint or weights, io/checkpoint_format.h) valid: its format and
// version, its allowed and required metadata keys and their values, its dtypes, its three
// checksums and canonical header, and the tensor names a model expects.
//
// Invariants: a file is data, never trusted, so every value is range-checked before use and every
// problem is an InputError(source, problem) with the file's text escaped (escape_control_chars);
// nothing here writes or changes a file. The loaders (checkpoint_format.cpp) throw at the first
// problem; inspect (checkpoint_inspect.cpp) uses the same checks to report as much as it can.
#pragma once

#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/checkpoint_format.h"
#include "io/safetensors.h"

namespace dptrain {

/// Decodes and range-checks the progress fields of checkpoint metadata (no checksum check).
/// Throws InputError(source, "metadata 'key' ...").
CheckpointState parse_checkpoint_state(const std::map<std::string, std::string>& metadata, const std::string& source);

/// Checks the checksums of a parsed dptrain file (either format). Throws InputError(source, ...)
/// naming what is damaged.
void verify_checksums(const SafeTensorsFile& file);

/// Per-tensor checksum status and the first integrity problem ("" when intact).
struct ChecksumStatus {
  std::string problem;
  std::map<std::string, std::string> per_tensor;  ///< name -> "ok" | "MISMATCH" | "no checksum"
};
/// The checks of verify_checksums without throwing: `problem` is the one verify_checksums reports,
/// `per_tensor` says which tensors' data match their sums (even when the header is damaged too).
ChecksumStatus check_checksums(const SafeTensorsFile& file);

/// Format, version and allowed metadata keys of a dptrain file of kind `format` (kCheckpointFormat
/// or kWeightsFormat), the required dptrain_version and config, and F32 dtypes. Throws
/// InputError(file.source, ...).
void check_format(const SafeTensorsFile& file, std::string_view format);

/// InputError(file.source, ...) naming the first tensor of `expected` the file lacks, or else the
/// first tensor the file has beyond `expected`.
void require_tensor_names(const SafeTensorsFile& file, const std::vector<std::string>& expected);

/// "tensor '<name>' holds N values that are NaN or Inf (...)" where `values` holds any, else
/// nothing: weights dptrain never writes (eval and predict refuse them; inspect names them).
std::optional<std::string> non_finite_weights_problem(std::string_view name, std::span<const float> values);

}  // namespace dptrain
