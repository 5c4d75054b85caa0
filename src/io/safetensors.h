// The safetensors format (huggingface/safetensors): an 8-byte little-endian header length N, N
// bytes of JSON ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}),
// then the data section; offsets are relative to its start. dptrain's weights files and
// checkpoints are safetensors files that PyTorch's loader reads unchanged.
//
// A file is data, never trusted: parse_safetensors() checks the header length, the JSON, every
// dtype, shape and offset (in range, sized as dtype x shape, not overlapping, covering the data
// section exactly) before anything else reads it.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace dptrain {

struct SafeTensor {
  std::string name;
  std::string dtype;            ///< "F32", "F64", "I64", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;    ///< little-endian raw bytes
};

struct SafeTensorsFile {
  std::map<std::string, std::string> metadata;
  std::vector<SafeTensor> tensors;  ///< in data-offset order
  /// The tensor named `name`, or null.
  const SafeTensor* find(const std::string& name) const;
};

/// A tensor to write: raw little-endian bytes of the given dtype and shape.
struct TensorRef {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::span<const uint8_t> bytes;
};

/// The file's bytes: header padded with spaces to a multiple of 8, tensors in the given order.
std::vector<uint8_t> encode_safetensors(const std::vector<TensorRef>& tensors,
                                        const std::map<std::string, std::string>& metadata);
/// Validates and decodes; InputError(source, problem) on any fault.
SafeTensorsFile parse_safetensors(std::span<const uint8_t> bytes, const std::string& source);
/// Reads and parses a file (InputError if missing or malformed).
SafeTensorsFile read_safetensors(const std::string& path);
/// Bytes of a file, or InputError(path, ...) if it cannot be read.
std::vector<uint8_t> read_file_bytes(const std::string& path);

/// Bytes per element of a safetensors dtype; 0 if unknown.
size_t dtype_size(const std::string& dtype);

}  // namespace dptrain
