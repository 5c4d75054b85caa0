#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dptrain {

namespace {

constexpr uint64_t kMaxHeader = 100u << 20;  // the reference implementation's limit

}  // namespace

size_t dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

const SafeTensor* SafeTensorsFile::find(const std::string& name) const {
  for (const SafeTensor& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

std::vector<uint8_t> encode_safetensors(const std::vector<TensorRef>& tensors,
                                        const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorRef& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::vector<uint8_t> out(8 + text.size() + offset);
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<uint8_t>(n >> (8 * i));
  std::memcpy(out.data() + 8, text.data(), text.size());
  uint8_t* data = out.data() + 8 + text.size();
  for (const TensorRef& t : tensors) {
    if (!t.bytes.empty()) std::memcpy(data, t.bytes.data(), t.bytes.size());
    data += t.bytes.size();
  }
  return out;
}

SafeTensorsFile parse_safetensors(std::span<const uint8_t> bytes, const std::string& source) {
  if (bytes.size() < 8) throw InputError(source, "too short for a safetensors file (" + std::to_string(bytes.size()) + " bytes)");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t{bytes[static_cast<size_t>(i)]} << (8 * i);
  if (n > kMaxHeader) throw InputError(source, "header length " + std::to_string(n) + " exceeds 100 MB: not a safetensors file");
  if (n > bytes.size() - 8)
    throw InputError(source, "truncated: header length " + std::to_string(n) + " exceeds the file (" +
                                 std::to_string(bytes.size()) + " bytes)");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(source, std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!header.is_object()) throw InputError(source, "header is not a JSON object");
  const std::span<const uint8_t> data = bytes.subspan(8 + n);
  SafeTensorsFile file;
  struct Range {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Range> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw InputError(source, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) throw InputError(source, "__metadata__ value '" + m.key() + "' is not a string");
        file.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!v.is_object() || v.size() != 3 || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      throw InputError(source, where + ": expected exactly dtype, shape and data_offsets");
    if (!v["dtype"].is_string()) throw InputError(source, where + ": dtype is not a string");
    SafeTensor t;
    t.name = name;
    t.dtype = v["dtype"].get<std::string>();
    const size_t esize = dtype_size(t.dtype);
    if (esize == 0) throw InputError(source, where + ": unknown dtype '" + t.dtype + "'");
    if (!v["shape"].is_array() || v["shape"].size() > 8) throw InputError(source, where + ": shape is not a list of at most 8 sizes");
    uint64_t count = 1;
    for (const nlohmann::json& d : v["shape"]) {
      if (!d.is_number_unsigned()) throw InputError(source, where + ": shape holds a value that is not a non-negative integer");
      const uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && count > std::numeric_limits<uint64_t>::max() / dim / esize) throw InputError(source, where + ": shape too large");
      count *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    const nlohmann::json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw InputError(source, where + ": data_offsets is not [begin, end]");
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data.size())
      throw InputError(source, where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                                   "] lie outside the data section (" + std::to_string(data.size()) + " bytes)");
    if (end - begin != count * esize)
      throw InputError(source, where + ": holds " + std::to_string(end - begin) + " bytes but dtype and shape need " +
                                   std::to_string(count * esize));
    ranges.push_back({begin, end, file.tensors.size()});
    file.tensors.push_back(std::move(t));
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (const Range& r : ranges) {
    if (r.begin != cursor)
      throw InputError(source, "tensor '" + file.tensors[r.index].name + "' " +
                                   (r.begin < cursor ? "overlaps the tensor before it" : "leaves a gap before it") +
                                   " in the data section");
    cursor = r.end;
  }
  if (cursor != data.size())
    throw InputError(source, "the data section has " + std::to_string(data.size() - cursor) + " bytes no tensor covers");
  std::vector<SafeTensor> ordered;
  for (const Range& r : ranges) {
    SafeTensor& t = file.tensors[r.index];
    t.data.assign(data.begin() + static_cast<std::ptrdiff_t>(r.begin), data.begin() + static_cast<std::ptrdiff_t>(r.end));
    ordered.push_back(std::move(t));
  }
  file.tensors = std::move(ordered);
  return file;
}

std::vector<uint8_t> read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw InputError(path, "cannot open the file");
  const std::streamoff size = in.tellg();
  if (size < 0) throw InputError(path, "cannot read the file");
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  in.seekg(0);
  if (size > 0 && !in.read(reinterpret_cast<char*>(bytes.data()), size)) throw InputError(path, "cannot read the file");
  return bytes;
}

SafeTensorsFile read_safetensors(const std::string& path) {
  const std::vector<uint8_t> bytes = read_file_bytes(path);
  return parse_safetensors(bytes, path);
}

}  // namespace dptrain
