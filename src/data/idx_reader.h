// IdxReader: LeCun's IDX format (big-endian magic 0x0000TTNN: type TT, NN dimensions, then NN
// big-endian u32 sizes, then the data), raw or gzip-compressed. Nothing in a header is trusted:
// sizes are checked against the bytes actually present before anything is allocated from them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dptrain {

struct IdxArray {
  std::vector<uint32_t> dims;
  std::vector<uint8_t> data;  ///< product(dims) bytes
};

/// Reads an unsigned-byte IDX file with `expected_ndims` dimensions. Throws InputError(path, ...).
IdxArray read_idx_u8(const std::string& path, int expected_ndims);

/// The whole file, gunzipped if it starts with the gzip magic. Throws InputError(path, ...).
/// `limit` bounds the decompressed size (a small gzip bomb must not exhaust memory).
std::vector<uint8_t> read_maybe_gzip(const std::string& path, size_t limit);

/// Parses IDX bytes already in memory (the fuzz target's entry). `source` names them in errors.
IdxArray parse_idx_u8(const std::vector<uint8_t>& bytes, int expected_ndims, const std::string& source);

}  // namespace dptrain
