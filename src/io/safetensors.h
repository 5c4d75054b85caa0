// The safetensors file format (https://github.com/huggingface/safetensors), as PyTorch's
// safetensors.torch.load_file reads it:
//
//   [8 bytes: N, little-endian u64] [N bytes: UTF-8 JSON header, space-padded to a multiple of 8]
//   [data section: raw little-endian tensor bytes]
//
// header = {"__metadata__": {string: string}, "<name>": {"dtype": "F32", "shape": [..],
//           "data_offsets": [begin, end]}, ...}, offsets relative to the data section.
//
// A file is data, never trusted: parse_safetensors checks every field, every size and every offset
// (no overlap, no gap, exact cover of the data section, overflow-safe sizes, header <= 100 MB,
// no duplicate keys) before handing anything out, and reports the first problem as
// InputError(source, problem). The writer emits one canonical form (metadata first with sorted
// keys, tensors in the given order and contiguous, compact JSON); the reader reports whether a
// file's header is byte-for-byte that form, which lets the checkpoint code detect any header
// change that leaves the JSON meaning intact (e.g. a padding byte flipped to a tab).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/escape.h"  // escape_control_chars, which the readers of these files use

namespace dptrain {

/// Largest header accepted; the reference implementation's limit.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

/// Bytes per element of a safetensors dtype ("F32" -> 4, "BF16" -> 2, ...), 0 if unknown.
size_t safetensors_dtype_size(std::string_view dtype);

/// A tensor to write: its bytes are little-endian elements of `dtype`, row-major `shape`.
struct TensorRef {
  std::string name;
  std::string dtype = "F32";
  std::vector<int64_t> shape;
  std::span<const uint8_t> bytes;
};

/// One row of the header table.
struct TensorEntry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t data_begin = 0;  ///< offsets into the data section, [begin, end)
  uint64_t data_end = 0;
};

/// A tensor read from a file: its header row and a copy of its bytes.
struct SafeTensor : TensorEntry {
  std::vector<uint8_t> data;
  int64_t element_count() const;
};

/// A fully validated file.
struct SafeTensorsFile {
  std::string source;  ///< path (or label) used in error messages
  std::map<std::string, std::string> metadata;
  std::vector<SafeTensor> tensors;  ///< in header order
  uint64_t header_bytes = 0;        ///< N, padding included
  uint64_t data_bytes = 0;
  std::string data_sha256;          ///< hex SHA-256 of the whole data section
  bool header_canonical = false;    ///< header is exactly what write_safetensors would produce

  /// The tensor named `name`, or nullptr.
  const SafeTensor* find(std::string_view name) const;

  /// Values of F32 tensor `name`, checked against `expected_shape`. Throws InputError(source,
  /// "tensor 'name' ...") if it is missing, not F32 or shaped differently.
  std::vector<float> f32(std::string_view name, const std::vector<int64_t>& expected_shape) const;
  /// As f32(), into `out` (whose size must be the element count) without allocating.
  void copy_f32(std::string_view name, const std::vector<int64_t>& expected_shape, std::span<float> out) const;
  /// As copy_f32(), also accepting an I64 tensor, whose values are converted to float.
  void copy_f32_or_i64(std::string_view name, const std::vector<int64_t>& expected_shape, std::span<float> out) const;
};

/// The canonical header JSON (unpadded) for a table and metadata: "__metadata__" first (omitted
/// when empty) with keys sorted, then the tensors in table order, each {"dtype","shape",
/// "data_offsets"}. Throws std::invalid_argument for text that is not valid UTF-8.
std::string safetensors_header_json(const std::vector<TensorEntry>& table,
                                    const std::map<std::string, std::string>& metadata);

/// The header table write_safetensors lays out: tensors contiguous in the given order. Throws
/// std::invalid_argument for a caller error (unknown dtype, byte count != shape, duplicate or
/// empty name, "__metadata__" as a name).
std::vector<TensorEntry> safetensors_layout(const std::vector<TensorRef>& tensors);

/// The whole file image, laid out by safetensors_layout (same errors).
std::vector<uint8_t> serialize_safetensors(const std::vector<TensorRef>& tensors,
                                           const std::map<std::string, std::string>& metadata);

/// serialize_safetensors + write_file_atomically.
void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata);

/// Validates and decodes a file image. Throws InputError(source, problem) on any defect.
SafeTensorsFile parse_safetensors(std::span<const uint8_t> bytes, const std::string& source);

/// Reads and parses `path`. Throws InputError(path, problem).
SafeTensorsFile read_safetensors(const std::string& path);

/// Best-effort description of a file that failed validation (for `dptrain inspect`): header size
/// and whatever entries of the header JSON could be read, each marked unvalidated. Never throws
/// for bad input.
std::string describe_unvalidated_header(std::span<const uint8_t> bytes);

/// "[32, 1, 3, 3]"
std::string shape_to_string(const std::vector<int64_t>& shape);

}  // namespace dptrain
