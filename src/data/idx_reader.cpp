#include "data/idx_reader.h"

#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>

#include "core/error.h"
#include "io/atomic_file.h"

namespace dptrain {

namespace {

constexpr size_t kMaxFileBytes = size_t{1} << 32;  // 4 GiB: far beyond any MNIST-class set

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

/// The whole size an IDX file's header announces (header and data), once `bytes` holds the header;
/// nullopt before that or for a header that is not IDX-shaped (parse_idx_u8 says what is wrong).
std::optional<size_t> idx_size_announced(const uint8_t* bytes, size_t size) {
  if (size < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[3] == 0 || bytes[3] > 4) return std::nullopt;
  const size_t header = 4 + 4 * size_t{bytes[3]};
  if (size < header) return std::nullopt;
  size_t total = 1;
  for (size_t i = 0; i < bytes[3]; ++i) {
    total *= be32(bytes + 4 + 4 * i);
    if (total > kMaxFileBytes) return std::nullopt;
  }
  return header + total;
}

std::vector<uint8_t> gunzip(const std::vector<uint8_t>& packed, const std::string& path, size_t limit) {
  z_stream zs{};
  // 16 + MAX_WBITS: gzip framing only, so a raw deflate stream is not silently accepted.
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw InputError(path, "cannot initialise zlib");
  std::unique_ptr<z_stream, int (*)(z_stream*)> guard(&zs, inflateEnd);
  std::vector<uint8_t> out;
  out.resize(std::min<size_t>(limit, std::max<size_t>(packed.size() * 4, 1 << 16)));
  zs.next_in = const_cast<Bytef*>(packed.data());
  zs.avail_in = static_cast<uInt>(packed.size());
  size_t produced = 0;
  for (;;) {
    if (produced == out.size()) {
      if (out.size() >= limit) throw InputError(path, "decompressed data exceeds " + std::to_string(limit) + " bytes");
      out.resize(std::min(limit, out.size() * 2));
    }
    zs.next_out = out.data() + produced;
    zs.avail_out = static_cast<uInt>(std::min<size_t>(out.size() - produced, 1u << 30));
    const size_t before = zs.avail_out;
    const int rc = inflate(&zs, Z_NO_FLUSH);
    produced += before - zs.avail_out;
    // A stream that decompresses past what its IDX header announces is refused as soon as it does:
    // a small gzip bomb would otherwise grow to the 4 GiB limit (and twice that in copies) first.
    if (const std::optional<size_t> announced = idx_size_announced(out.data(), produced);
        announced && produced > *announced)
      throw InputError(path, "decompresses to more than the " + std::to_string(*announced) +
                                 " bytes its IDX header announces");
    if (rc == Z_STREAM_END) break;
    if (rc == Z_BUF_ERROR && zs.avail_in == 0) throw InputError(path, "gzip data is truncated");
    if (rc != Z_OK && rc != Z_BUF_ERROR)
      throw InputError(path, std::string("gzip data is corrupt (") + (zs.msg ? zs.msg : "zlib error") + ")");
  }
  if (zs.avail_in != 0) throw InputError(path, "trailing bytes after the gzip stream");
  out.resize(produced);
  return out;
}

}  // namespace

std::vector<uint8_t> read_maybe_gzip(const std::string& path, size_t limit) {
  std::vector<uint8_t> bytes = read_file_bytes(path, kMaxFileBytes);
  if (bytes.size() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b) return gunzip(bytes, path, limit);
  return bytes;
}

IdxArray parse_idx_u8(const std::vector<uint8_t>& bytes, int expected_ndims, const std::string& source) {
  if (bytes.empty()) throw InputError(source, "file is empty");
  if (bytes.size() < 4) throw InputError(source, "truncated header (" + std::to_string(bytes.size()) + " bytes)");
  if (bytes[0] != 0 || bytes[1] != 0)
    throw InputError(source, "bad magic number: not an IDX file (first bytes must be 00 00)");
  if (bytes[2] != 0x08) {
    char type[8];
    std::snprintf(type, sizeof type, "0x%02x", bytes[2]);
    throw InputError(source, std::string("bad magic number: data type ") + type + " is not unsigned byte (0x08)");
  }
  const int ndims = bytes[3];
  if (ndims != expected_ndims)
    throw InputError(source, "has " + std::to_string(ndims) + " dimensions, expected " + std::to_string(expected_ndims) +
                                 (expected_ndims == 3 ? " (an images file, magic 0x00000803)" : " (a labels file, magic 0x00000801)"));
  const size_t header = 4 + 4 * static_cast<size_t>(ndims);
  if (bytes.size() < header) throw InputError(source, "truncated header (" + std::to_string(bytes.size()) + " bytes)");
  IdxArray a;
  uint64_t expected = 1;
  for (int i = 0; i < ndims; ++i) {
    const uint32_t d = be32(&bytes[4 + 4 * static_cast<size_t>(i)]);
    a.dims.push_back(d);
    expected *= d;  // at most 3 factors below 2^32 each: checked against the real size below
    if (expected > kMaxFileBytes) throw InputError(source, "header promises more than 4 GiB of data");
  }
  const uint64_t actual = bytes.size() - header;
  if (actual < expected)
    throw InputError(source, "truncated: header promises " + std::to_string(expected) + " data bytes, file has " +
                                 std::to_string(actual));
  if (actual > expected)
    throw InputError(source, "trailing bytes: header promises " + std::to_string(expected) + " data bytes, file has " +
                                 std::to_string(actual));
  a.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  return a;
}

IdxArray read_idx_u8(const std::string& path, int expected_ndims) {
  return parse_idx_u8(read_maybe_gzip(path, kMaxFileBytes), expected_ndims, path);
}

}  // namespace dptrain
