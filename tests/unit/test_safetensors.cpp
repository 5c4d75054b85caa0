// safetensors: round trip, the exact byte layout PyTorch's loader expects, and rejection (with a
// specific InputError) of every kind of malformed header.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"
#include "io/sha256.h"

namespace dptrain {
namespace {

namespace fs = std::filesystem;

std::span<const uint8_t> as_bytes(const std::vector<float>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(float)};
}

/// [u64 LE length][header][data]; `length` overrides the prefix.
std::vector<uint8_t> raw_file(const std::string& header, const std::vector<uint8_t>& data = {},
                              std::optional<uint64_t> length = std::nullopt) {
  const uint64_t n = length.value_or(header.size());
  std::vector<uint8_t> out(8 + header.size() + data.size());
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  std::copy(header.begin(), header.end(), out.begin() + 8);
  std::copy(data.begin(), data.end(), out.begin() + 8 + static_cast<ptrdiff_t>(header.size()));
  return out;
}

/// Expects parse_safetensors to throw InputError "src: ...<needle>...".
void expect_rejected(const std::vector<uint8_t>& bytes, const std::string& needle) {
  try {
    parse_safetensors(bytes, "src");
    ADD_FAILURE() << "accepted; expected an error containing '" << needle << "'";
  } catch (const InputError& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.rfind("src: ", 0), 0u) << message;
    EXPECT_NE(message.find(needle), std::string::npos) << "message: " << message << "\nexpected: " << needle;
  }
}

class SafetensorsFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("dptrain-st-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(SafetensorsFileTest, RoundTripKeepsEverything) {
  const std::vector<float> weight = {1.5f, -2.0f, 0.0f, 3.25f, -0.0f, 1e-30f};
  const std::vector<int64_t> ids = {-1, 0, 1, INT64_MAX};
  const double scalar = 2.718281828459045;
  std::vector<TensorRef> tensors = {
      {"conv1.weight", "F32", {2, 1, 3}, as_bytes(weight)},
      {"ids", "I64", {4}, {reinterpret_cast<const uint8_t*>(ids.data()), ids.size() * 8}},
      {"scalar", "F64", {}, {reinterpret_cast<const uint8_t*>(&scalar), 8}},
      {"empty", "F32", {0, 3}, {}},
  };
  const std::map<std::string, std::string> metadata = {{"b", "two\nlines"}, {"a", "ünïcode"}};
  const std::string path = (dir_ / "t.safetensors").string();
  write_safetensors(path, tensors, metadata);

  const SafeTensorsFile file = read_safetensors(path);
  EXPECT_EQ(file.source, path);
  EXPECT_EQ(file.metadata, metadata);
  EXPECT_TRUE(file.header_canonical);
  EXPECT_EQ(file.header_bytes % 8, 0u);
  ASSERT_EQ(file.tensors.size(), 4u);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const SafeTensor& t = file.tensors[i];
    EXPECT_EQ(t.name, tensors[i].name);
    EXPECT_EQ(t.dtype, tensors[i].dtype);
    EXPECT_EQ(t.shape, tensors[i].shape);
    EXPECT_EQ(t.data, std::vector<uint8_t>(tensors[i].bytes.begin(), tensors[i].bytes.end())) << t.name;
  }
  EXPECT_EQ(file.f32("conv1.weight", {2, 1, 3}), weight);
  EXPECT_EQ(file.find("empty")->element_count(), 0);
  EXPECT_EQ(file.find("scalar")->element_count(), 1);
  EXPECT_EQ(file.find("nope"), nullptr);

  // The data section is the tensors back to back, and data_sha256 hashes exactly it.
  std::vector<uint8_t> data;
  for (const TensorRef& t : tensors) data.insert(data.end(), t.bytes.begin(), t.bytes.end());
  EXPECT_EQ(file.data_bytes, data.size());
  EXPECT_EQ(file.data_sha256, sha256_hex(data));
  EXPECT_EQ(fs::file_size(path), 8 + file.header_bytes + data.size());
}

TEST(Safetensors, ExactByteLayout) {
  // What safetensors' reference writer produces for {"a": tensor([1., -2.])}: length prefix,
  // compact JSON padded with spaces to a multiple of 8, raw little-endian floats.
  const std::vector<float> a = {1.0f, -2.0f};
  const std::vector<uint8_t> bytes = serialize_safetensors({{"a", "F32", {2}, as_bytes(a)}}, {});
  const std::string json = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  ASSERT_EQ(json.size(), 54u);
  std::vector<uint8_t> expected = {56, 0, 0, 0, 0, 0, 0, 0};
  expected.insert(expected.end(), json.begin(), json.end());
  expected.insert(expected.end(), {' ', ' '});
  expected.insert(expected.end(), {0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0});
  EXPECT_EQ(bytes, expected);

  // Metadata comes first, keys sorted; tensors keep the caller's order and are contiguous.
  const std::vector<float> b = {5.0f};
  const std::vector<uint8_t> with_meta =
      serialize_safetensors({{"z", "F32", {1}, as_bytes(b)}, {"a", "F32", {2}, as_bytes(a)}}, {{"k", "v"}, {"format", "pt"}});
  const std::string header(with_meta.begin() + 8, with_meta.begin() + 8 + with_meta[0]);
  EXPECT_EQ(header.substr(0, header.find_last_not_of(' ') + 1),
            R"({"__metadata__":{"format":"pt","k":"v"},"z":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})");
}

TEST(Safetensors, AcceptsOtherWritersLayout) {
  // Key order, whitespace and tensor order differ from ours (e.g. written by another tool): valid,
  // but not canonical.
  const std::string header = R"({ "b": {"shape": [1], "dtype": "F32", "data_offsets": [4, 8]},
    "a": {"data_offsets": [0, 4], "dtype": "I32", "shape": []}, "__metadata__": {"format": "pt"} })";
  const std::vector<uint8_t> data = {1, 0, 0, 0, 0, 0, 0x80, 0x3f};
  const SafeTensorsFile file = parse_safetensors(raw_file(header, data), "src");
  ASSERT_EQ(file.tensors.size(), 2u);
  EXPECT_EQ(file.tensors[0].name, "b");  // header order is kept
  EXPECT_EQ(file.f32("b", {1}), std::vector<float>{1.0f});
  EXPECT_EQ(file.find("a")->data, std::vector<uint8_t>({1, 0, 0, 0}));
  EXPECT_EQ(file.metadata.at("format"), "pt");
  EXPECT_FALSE(file.header_canonical);
}

TEST(Safetensors, CanonicalFlagSeesMeaningPreservingEdits) {
  const std::vector<float> a = {1.0f, 2.0f};
  std::vector<uint8_t> bytes = serialize_safetensors({{"a", "F32", {2}, as_bytes(a)}}, {{"k", "v"}});
  EXPECT_TRUE(parse_safetensors(bytes, "src").header_canonical);
  const size_t last_header_byte = 8 + bytes[0] - 1;
  ASSERT_EQ(bytes[last_header_byte], ' ');
  bytes[last_header_byte] = '\t';  // still valid JSON, same meaning
  const SafeTensorsFile file = parse_safetensors(bytes, "src");
  EXPECT_FALSE(file.header_canonical);
  EXPECT_EQ(file.f32("a", {2}), a);
}

TEST(Safetensors, RejectsBadSizes) {
  expect_rejected({}, "0 bytes, too short");
  expect_rejected({1, 2, 3, 4, 5, 6, 7}, "7 bytes, too short");
  expect_rejected(raw_file("{}", {}, 3), "header length 3 exceeds the 2 bytes after it");
  expect_rejected(raw_file("{}", {}, UINT64_MAX), "exceeds the limit");
  expect_rejected(raw_file("{}", {}, 100'000'001), "exceeds the limit");
  expect_rejected(raw_file("", {}), "does not start with '{'");
}

TEST(Safetensors, RejectsBadJson) {
  expect_rejected(raw_file("[1, 2]"), "does not start with '{'");
  expect_rejected(raw_file(" {}"), "does not start with '{'");
  expect_rejected(raw_file(R"({"a":)"), "not valid JSON");
  expect_rejected(raw_file("{}x"), "not valid JSON");
  expect_rejected(raw_file("{\"\xff\": 1}"), "not valid JSON");  // not UTF-8
  expect_rejected(raw_file(R"({"__metadata__": {}, "__metadata__": {}})"), "duplicate key '__metadata__'");
  expect_rejected(raw_file(R"({"a": {"dtype": "F32", "dtype": "F32", "shape": [], "data_offsets": [0, 4]}})"),
                  "duplicate key 'dtype'");
  std::string deep = "{\"a\":";
  for (int i = 0; i < 100; ++i) deep += "[";
  for (int i = 0; i < 100; ++i) deep += "]";
  expect_rejected(raw_file(deep + "}"), "nested too deeply");
}

TEST(Safetensors, RejectsBadEntries) {
  const std::vector<uint8_t> four(4, 0);
  auto entry = [&](const std::string& body) { return raw_file(R"({"t": )" + body + "}", four); };
  expect_rejected(entry("5"), "tensor 't': entry is not a JSON object");
  expect_rejected(entry(R"({"shape": [1], "data_offsets": [0, 4]})"), "tensor 't': missing field 'dtype'");
  expect_rejected(entry(R"({"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1})"), "unknown field 'x'");
  expect_rejected(entry(R"({"dtype": 4, "shape": [1], "data_offsets": [0, 4]})"), "dtype is not a string");
  expect_rejected(entry(R"({"dtype": "F33", "shape": [1], "data_offsets": [0, 4]})"), "unknown dtype 'F33'");
  expect_rejected(entry(R"({"dtype": "F32", "shape": 1, "data_offsets": [0, 4]})"), "shape is not an array");
  expect_rejected(entry(R"({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]})"), "not a non-negative integer");
  expect_rejected(entry(R"({"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]})"), "not a non-negative integer");
  expect_rejected(entry(R"({"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]})"), "not a non-negative integer");
  expect_rejected(entry(R"({"dtype": "F32", "shape": [9223372036854775808], "data_offsets": [0, 4]})"),
                  "not a non-negative integer");
  expect_rejected(entry(R"({"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]})"), "not an array of 2");
  expect_rejected(entry(R"({"dtype": "F32", "shape": [1], "data_offsets": [0, -4]})"), "not a non-negative integer");
  expect_rejected(entry(R"({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]})"), "begin 4 > end 0");
  expect_rejected(entry(R"({"dtype": "F32", "shape": [1], "data_offsets": [0, 8]})"), "past the data section (4 bytes)");
  expect_rejected(entry(R"({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]})"), "needs 8 bytes but data_offsets span 4");
  expect_rejected(entry(R"({"dtype": "F32", "shape": [4611686018427387904, 4611686018427387904], "data_offsets": [0, 4]})"),
                  "is too large");
  expect_rejected(entry(R"({"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 4]})"), "is too large");
  expect_rejected(raw_file(R"({"": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", four), "empty name");
  // Names from the file are printed with control characters escaped (no terminal escapes).
  expect_rejected(raw_file(R"({"a\u001b[31m": 5})"), "tensor 'a\\x1b[31m': entry is not a JSON object");
  expect_rejected(raw_file(R"({"__metadata__": []})"), "__metadata__ is not a JSON object");
  expect_rejected(raw_file(R"({"__metadata__": {"k": 1}})"), "__metadata__ value of 'k' is not a string");
}

TEST(Safetensors, RejectsBadLayout) {
  const std::vector<uint8_t> eight(8, 0);
  auto f32 = [](const std::string& name, int begin, int end) {
    return "\"" + name + R"(": {"dtype": "U8", "shape": [)" + std::to_string(end - begin) + R"(], "data_offsets": [)" +
           std::to_string(begin) + ", " + std::to_string(end) + "]}";
  };
  EXPECT_NO_THROW(parse_safetensors(raw_file("{" + f32("a", 0, 4) + ", " + f32("b", 4, 8) + "}", eight), "src"));
  expect_rejected(raw_file("{" + f32("a", 0, 6) + ", " + f32("b", 4, 8) + "}", eight), "'b' overlaps tensor 'a'");
  expect_rejected(raw_file("{" + f32("a", 0, 4) + ", " + f32("b", 0, 4) + "}", eight), "overlaps");
  expect_rejected(raw_file("{" + f32("a", 0, 3) + ", " + f32("b", 4, 8) + "}", eight), "gap of 1 bytes before tensor 'b'");
  expect_rejected(raw_file("{" + f32("a", 1, 8) + "}", eight), "gap of 1 bytes before tensor 'a'");
  expect_rejected(raw_file("{" + f32("a", 0, 4) + "}", eight), "4 bytes after the last tensor");
  expect_rejected(raw_file("{}", eight), "8 bytes after the last tensor");
  expect_rejected(raw_file("{" + f32("a", 0, 8) + ", " + f32("z", 4, 4) + "}", eight), "'z' overlaps tensor 'a'");
  // Zero-size tensors sit anywhere on a boundary.
  EXPECT_NO_THROW(parse_safetensors(raw_file("{" + f32("a", 0, 4) + ", " + f32("z", 4, 4) + ", " + f32("b", 4, 8) + "}", eight), "src"));
  EXPECT_NO_THROW(parse_safetensors(raw_file("{}"), "src"));
}

TEST(Safetensors, TypedAccessNamesTheTensor) {
  const std::vector<float> a = {1.0f, 2.0f};
  const std::vector<uint8_t> u8 = {7};
  const SafeTensorsFile file =
      parse_safetensors(serialize_safetensors({{"a", "F32", {2}, as_bytes(a)}, {"u", "U8", {1}, u8}}, {}), "src");
  auto expect_error = [&](std::string_view name, std::vector<int64_t> shape, const std::string& needle) {
    try {
      file.f32(name, shape);
      ADD_FAILURE() << "accepted " << name;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("b", {2}, "src: tensor 'b' is missing");
  expect_error("u", {1}, "src: tensor 'u' has dtype U8, expected F32");
  expect_error("a", {1, 2}, "src: tensor 'a' has shape [2], expected [1, 2]");
  std::vector<float> out(2);
  file.copy_f32("a", {2}, out);
  EXPECT_EQ(out, a);
  std::vector<float> wrong(3);
  EXPECT_THROW(file.copy_f32("a", {2}, wrong), std::invalid_argument);
}

TEST(Safetensors, WriterRejectsCallerErrors) {
  const std::vector<float> a = {1.0f, 2.0f};
  EXPECT_THROW(serialize_safetensors({{"a", "F32", {3}, as_bytes(a)}}, {}), std::invalid_argument);
  EXPECT_THROW(serialize_safetensors({{"a", "F32", {-2}, as_bytes(a)}}, {}), std::invalid_argument);
  EXPECT_THROW(serialize_safetensors({{"a", "F31", {2}, as_bytes(a)}}, {}), std::invalid_argument);
  EXPECT_THROW(serialize_safetensors({{"a", "F32", {2}, as_bytes(a)}, {"a", "F32", {2}, as_bytes(a)}}, {}),
               std::invalid_argument);
  EXPECT_THROW(serialize_safetensors({{"__metadata__", "F32", {2}, as_bytes(a)}}, {}), std::invalid_argument);
  EXPECT_THROW(serialize_safetensors({{"", "F32", {2}, as_bytes(a)}}, {}), std::invalid_argument);
  EXPECT_THROW(serialize_safetensors({}, {{"k", "\xff"}}), std::invalid_argument);  // not UTF-8
}

TEST_F(SafetensorsFileTest, ReadErrorsAreInputErrors) {
  const std::string missing = (dir_ / "missing.safetensors").string();
  try {
    read_safetensors(missing);
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(missing + ": cannot open"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_safetensors(dir_.string()), InputError);  // a folder
}

}  // namespace
}  // namespace dptrain
