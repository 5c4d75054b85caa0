// safetensors reader and writer. The reader validates in a fixed order (sizes, JSON syntax,
// schema, per-tensor sizes, offset layout) so the first defect found is the one reported.
#include "io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <set>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/sha256.h"

namespace dptrain {

// Tensor bytes are copied to and from host floats with memcpy.
static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

namespace {

using OrderedJson = nlohmann::ordered_json;

constexpr std::string_view kMetadataKey = "__metadata__";

/// Headers we write are 3 levels deep (root, entry, shape); anything much deeper is hostile and
/// would only cost memory.
constexpr int kMaxJsonDepth = 16;

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void write_u64_le(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

/// Element count of `shape`, or false on a negative dim or overflow.
bool checked_element_count(const std::vector<int64_t>& shape, uint64_t& count) {
  count = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (__builtin_mul_overflow(count, static_cast<uint64_t>(d), &count)) return false;
  }
  return true;
}

/// Parses the header text into ordered JSON, rejecting duplicate keys (nlohmann would silently
/// keep the last one) and nesting deeper than kMaxJsonDepth.
OrderedJson parse_header_json(std::string_view text, const std::string& source) {
  std::vector<std::set<std::string>> open_objects;  // keys seen so far, per open object
  auto check = [&](int depth, nlohmann::json::parse_event_t event, OrderedJson& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if (depth > kMaxJsonDepth) throw InputError(source, "header JSON is nested too deeply");
    switch (event) {
      case Event::object_start:
        open_objects.emplace_back();
        break;
      case Event::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case Event::key: {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!open_objects.empty() && !open_objects.back().insert(key).second) {
          throw InputError(source, "header JSON has duplicate key '" + escape_control_chars(key) + "'");
        }
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return OrderedJson::parse(text.begin(), text.end(), check);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(source, "header is not valid JSON: " + escape_control_chars(e.what()));
  }
}

/// A JSON value as a non-negative integer that fits int64, or false.
bool as_index(const OrderedJson& v, uint64_t& out) {
  if (!v.is_number_unsigned()) return false;
  out = v.get<uint64_t>();
  return out <= static_cast<uint64_t>(INT64_MAX);
}

TensorEntry parse_entry(const std::string& name, const OrderedJson& value, uint64_t data_bytes,
                        const std::string& source) {
  auto fail = [&](const std::string& problem) {
    return InputError(source, "tensor '" + escape_control_chars(name) + "': " + problem);
  };
  if (name.empty()) throw InputError(source, "a tensor has an empty name");
  if (!value.is_object()) throw fail("entry is not a JSON object");
  for (const auto& [key, unused] : value.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") throw fail("unknown field '" + escape_control_chars(key) + "'");
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!value.contains(key)) throw fail(std::string("missing field '") + key + "'");
  }
  TensorEntry entry;
  entry.name = name;

  const OrderedJson& dtype = value["dtype"];
  if (!dtype.is_string()) throw fail("dtype is not a string");
  entry.dtype = dtype.get<std::string>();
  const size_t element_size = safetensors_dtype_size(entry.dtype);
  if (element_size == 0) throw fail("unknown dtype '" + escape_control_chars(entry.dtype) + "'");

  const OrderedJson& shape = value["shape"];
  if (!shape.is_array()) throw fail("shape is not an array");
  for (const OrderedJson& dim : shape) {
    uint64_t d = 0;
    if (!as_index(dim, d)) throw fail("shape has an entry that is not a non-negative integer");
    entry.shape.push_back(static_cast<int64_t>(d));
  }

  const OrderedJson& offsets = value["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) throw fail("data_offsets is not an array of 2 integers");
  if (!as_index(offsets[0], entry.data_begin) || !as_index(offsets[1], entry.data_end)) {
    throw fail("data_offsets has an entry that is not a non-negative integer");
  }
  if (entry.data_begin > entry.data_end) {
    throw fail("data_offsets begin " + std::to_string(entry.data_begin) + " > end " + std::to_string(entry.data_end));
  }
  if (entry.data_end > data_bytes) {
    throw fail("data_offsets end " + std::to_string(entry.data_end) + " is past the data section (" +
               std::to_string(data_bytes) + " bytes)");
  }

  uint64_t count = 0, bytes = 0;
  if (!checked_element_count(entry.shape, count) || __builtin_mul_overflow(count, element_size, &bytes)) {
    throw fail("shape " + shape_to_string(entry.shape) + " is too large");
  }
  if (bytes != entry.data_end - entry.data_begin) {
    throw fail("shape " + shape_to_string(entry.shape) + " of " + entry.dtype + " needs " + std::to_string(bytes) +
               " bytes but data_offsets span " + std::to_string(entry.data_end - entry.data_begin));
  }
  return entry;
}

/// The tensors must tile the data section: sorted by offset, each starts where the last ended and
/// the last ends at the section's end.
void check_layout(const std::vector<TensorEntry>& table, uint64_t data_bytes, const std::string& source) {
  std::vector<const TensorEntry*> by_offset;
  for (const TensorEntry& e : table) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return a->data_begin != b->data_begin ? a->data_begin < b->data_begin : a->data_end < b->data_end;
  });
  uint64_t covered = 0;
  const TensorEntry* previous = nullptr;
  for (const TensorEntry* e : by_offset) {
    if (e->data_begin < covered) {
      throw InputError(source, "tensor '" + escape_control_chars(e->name) + "' overlaps tensor '" +
                                   escape_control_chars(previous->name) + "' in the data section");
    }
    if (e->data_begin > covered) {
      throw InputError(source, "gap of " + std::to_string(e->data_begin - covered) + " bytes before tensor '" +
                                   escape_control_chars(e->name) + "' in the data section");
    }
    covered = e->data_end;
    previous = e;
  }
  if (covered != data_bytes) {
    throw InputError(source, "data section has " + std::to_string(data_bytes - covered) +
                                 " bytes after the last tensor that no tensor covers");
  }
}

std::string pad_header(std::string json) {
  json.append((8 - json.size() % 8) % 8, ' ');
  return json;
}

}  // namespace

size_t safetensors_dtype_size(std::string_view dtype) {
  static const std::map<std::string_view, size_t> kSizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2},
      {"U16", 2},  {"F16", 2}, {"BF16", 2}, {"I32", 4},    {"U32", 4},     {"F32", 4},
      {"I64", 8},  {"U64", 8}, {"F64", 8}};
  const auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

int64_t SafeTensor::element_count() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated by the reader: cannot overflow
  return n;
}

const SafeTensor* SafeTensorsFile::find(std::string_view name) const {
  for (const SafeTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

namespace {

/// The tensor `name` if it is F32 and shaped `expected_shape`; InputError(source, ...) otherwise.
const SafeTensor& checked_f32(const SafeTensorsFile& file, std::string_view name,
                              const std::vector<int64_t>& expected_shape, bool allow_i64 = false) {
  const SafeTensor* t = file.find(name);
  const std::string label = "tensor '" + std::string(name) + "'";
  if (t == nullptr) throw InputError(file.source, label + " is missing");
  if (t->dtype != "F32" && !(allow_i64 && t->dtype == "I64"))
    throw InputError(file.source, label + " has dtype " + t->dtype + (allow_i64 ? ", expected I64 or F32" : ", expected F32"));
  if (t->shape != expected_shape) {
    throw InputError(file.source, label + " has shape " + shape_to_string(t->shape) + ", expected " +
                                      shape_to_string(expected_shape));
  }
  return *t;
}

}  // namespace

void SafeTensorsFile::copy_f32(std::string_view name, const std::vector<int64_t>& expected_shape,
                               std::span<float> out) const {
  const SafeTensor& t = checked_f32(*this, name, expected_shape);
  if (out.size() * sizeof(float) != t.data.size()) {
    throw std::invalid_argument("copy_f32: output of " + std::to_string(out.size()) + " floats for tensor '" +
                                t.name + "' of " + std::to_string(t.data.size() / sizeof(float)));
  }
  if (!out.empty()) std::memcpy(out.data(), t.data.data(), t.data.size());
}

void SafeTensorsFile::copy_f32_or_i64(std::string_view name, const std::vector<int64_t>& expected_shape,
                                      std::span<float> out) const {
  const SafeTensor& t = checked_f32(*this, name, expected_shape, true);
  if (t.dtype == "F32") return copy_f32(name, expected_shape, out);
  if (out.size() * sizeof(int64_t) != t.data.size())
    throw std::invalid_argument("copy_f32_or_i64: output of " + std::to_string(out.size()) + " values for tensor '" +
                                t.name + "' of " + std::to_string(t.data.size() / sizeof(int64_t)));
  for (size_t i = 0; i < out.size(); ++i) {
    int64_t v = 0;
    std::memcpy(&v, t.data.data() + i * sizeof(int64_t), sizeof v);
    out[i] = static_cast<float>(v);
  }
}

std::vector<float> SafeTensorsFile::f32(std::string_view name, const std::vector<int64_t>& expected_shape) const {
  const SafeTensor& t = checked_f32(*this, name, expected_shape);
  std::vector<float> values(t.data.size() / sizeof(float));
  if (!values.empty()) std::memcpy(values.data(), t.data.data(), t.data.size());
  return values;
}

std::string safetensors_header_json(const std::vector<TensorEntry>& table,
                                    const std::map<std::string, std::string>& metadata) {
  OrderedJson header = OrderedJson::object();
  if (!metadata.empty()) {
    OrderedJson meta = OrderedJson::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header[std::string(kMetadataKey)] = std::move(meta);
  }
  for (const TensorEntry& e : table) {
    OrderedJson entry = OrderedJson::object();
    entry["dtype"] = e.dtype;
    entry["shape"] = e.shape;
    entry["data_offsets"] = {e.data_begin, e.data_end};
    header[e.name] = std::move(entry);
  }
  try {
    return header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(std::string("safetensors header: ") + e.what());
  }
}

std::vector<TensorEntry> safetensors_layout(const std::vector<TensorRef>& tensors) {
  std::vector<TensorEntry> table;
  std::set<std::string_view> names;
  uint64_t offset = 0;
  for (const TensorRef& t : tensors) {
    const std::string what = "safetensors: tensor '" + t.name + "': ";
    if (t.name.empty() || t.name == kMetadataKey) throw std::invalid_argument(what + "reserved or empty name");
    if (!names.insert(t.name).second) throw std::invalid_argument(what + "duplicate name");
    const size_t element_size = safetensors_dtype_size(t.dtype);
    if (element_size == 0) throw std::invalid_argument(what + "unknown dtype " + t.dtype);
    uint64_t count = 0, bytes = 0;
    if (!checked_element_count(t.shape, count) || __builtin_mul_overflow(count, element_size, &bytes) ||
        bytes != t.bytes.size()) {
      throw std::invalid_argument(what + std::to_string(t.bytes.size()) + " bytes do not match shape " +
                                  shape_to_string(t.shape) + " of " + t.dtype);
    }
    table.push_back({t.name, t.dtype, t.shape, offset, offset + bytes});
    offset += bytes;
  }
  return table;
}

std::vector<uint8_t> serialize_safetensors(const std::vector<TensorRef>& tensors,
                                           const std::map<std::string, std::string>& metadata) {
  const std::vector<TensorEntry> table = safetensors_layout(tensors);
  const uint64_t offset = table.empty() ? 0 : table.back().data_end;
  const std::string header = pad_header(safetensors_header_json(table, metadata));
  if (header.size() > kMaxSafetensorsHeaderBytes) throw std::invalid_argument("serialize_safetensors: header too large");

  std::vector<uint8_t> out(8 + header.size() + offset);
  write_u64_le(out.data(), header.size());
  std::memcpy(out.data() + 8, header.data(), header.size());
  uint8_t* data = out.data() + 8 + header.size();
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!tensors[i].bytes.empty()) std::memcpy(data + table[i].data_begin, tensors[i].bytes.data(), tensors[i].bytes.size());
  }
  return out;
}

void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_file_atomically(path, serialize_safetensors(tensors, metadata));
}

SafeTensorsFile parse_safetensors(std::span<const uint8_t> bytes, const std::string& source) {
  if (bytes.size() < 8) {
    throw InputError(source, "file is " + std::to_string(bytes.size()) +
                                 " bytes, too short for the 8-byte header length (truncated?)");
  }
  const uint64_t header_bytes = read_u64_le(bytes.data());
  if (header_bytes > kMaxSafetensorsHeaderBytes) {
    throw InputError(source, "header length " + std::to_string(header_bytes) + " exceeds the limit of " +
                                 std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  }
  if (header_bytes > bytes.size() - 8) {
    throw InputError(source, "header length " + std::to_string(header_bytes) + " exceeds the " +
                                 std::to_string(bytes.size() - 8) + " bytes after it (truncated?)");
  }
  const std::string_view header_text(reinterpret_cast<const char*>(bytes.data()) + 8, header_bytes);
  if (header_text.empty() || header_text.front() != '{') throw InputError(source, "header does not start with '{'");

  const OrderedJson header = parse_header_json(header_text, source);
  if (!header.is_object()) throw InputError(source, "header is not a JSON object");

  SafeTensorsFile file;
  file.source = source;
  file.header_bytes = header_bytes;
  file.data_bytes = bytes.size() - 8 - header_bytes;

  std::vector<TensorEntry> table;
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object()) throw InputError(source, "__metadata__ is not a JSON object");
      for (const auto& [meta_key, meta_value] : value.items()) {
        if (!meta_value.is_string()) throw InputError(source, "__metadata__ value of '" + escape_control_chars(meta_key) + "' is not a string");
        file.metadata.emplace(meta_key, meta_value.get<std::string>());
      }
      continue;
    }
    table.push_back(parse_entry(key, value, file.data_bytes, source));
  }
  check_layout(table, file.data_bytes, source);

  file.header_canonical = pad_header(safetensors_header_json(table, file.metadata)) == header_text;
  const std::span<const uint8_t> data = bytes.subspan(8 + header_bytes);
  file.data_sha256 = sha256_hex(data);
  file.tensors.reserve(table.size());
  for (TensorEntry& e : table) {
    SafeTensor t;
    static_cast<TensorEntry&>(t) = std::move(e);
    t.data.assign(data.begin() + static_cast<ptrdiff_t>(t.data_begin), data.begin() + static_cast<ptrdiff_t>(t.data_end));
    file.tensors.push_back(std::move(t));
  }
  return file;
}

SafeTensorsFile read_safetensors(const std::string& path) {
  const std::string bytes = read_whole_file(path);
  return parse_safetensors(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), path);
}

std::string describe_unvalidated_header(std::span<const uint8_t> bytes) {
  if (bytes.size() < 8) return "file is " + std::to_string(bytes.size()) + " bytes: no header length\n";
  const uint64_t header_bytes = read_u64_le(bytes.data());
  std::string out = "header length: " + std::to_string(header_bytes) + " bytes; file: " + std::to_string(bytes.size()) +
                    " bytes\n";
  if (header_bytes > kMaxSafetensorsHeaderBytes || header_bytes > bytes.size() - 8) return out;
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()) + 8, header_bytes);
  // The same guarded parse as the reader's; any failure (syntax, depth, duplicates) ends the listing.
  OrderedJson header;
  try {
    header = parse_header_json(text, "");
  } catch (const std::exception&) {
    return out + "header JSON could not be parsed\n";
  }
  if (!header.is_object()) return out + "header JSON is not an object\n";
  out += "header entries (unvalidated):\n";
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object()) continue;
      for (const auto& [meta_key, meta_value] : value.items()) {
        out += "  metadata " + escape_control_chars(meta_key) + " = ";
        if (!meta_value.is_string()) {
          out += "<not a string>\n";
          continue;
        }
        std::string s = meta_value.get<std::string>();
        if (s.size() > 80 || s.find('\n') != std::string::npos) {
          s = s.substr(0, std::min(s.find('\n'), size_t{80})) + " ... (" + std::to_string(s.size()) + " chars)";
        }
        out += escape_control_chars(s) + "\n";
      }
      continue;
    }
    out += "  tensor " + escape_control_chars(key);
    if (value.is_object() && value.contains("dtype") && value["dtype"].is_string()) {
      out += " " + escape_control_chars(value["dtype"].get<std::string>());
    }
    if (value.is_object() && value.contains("shape") && value["shape"].is_array()) {
      std::vector<int64_t> shape;
      bool ok = true;
      for (const OrderedJson& d : value["shape"]) {
        uint64_t v = 0;
        ok = ok && as_index(d, v);
        shape.push_back(static_cast<int64_t>(v));
      }
      if (ok) out += " " + shape_to_string(shape);
    }
    out += "\n";
  }
  return out;
}

}  // namespace dptrain
