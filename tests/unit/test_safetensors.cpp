// The safetensors encoding (byte layout PyTorch's loader expects) and the validation of every
// header field: truncations, flipped bytes and lying offsets are all rejected with the file named.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"

namespace dptrain {
namespace {

std::vector<uint8_t> sample_file() {
  static const float w[6] = {1, 2, 3, 4, 5, 6};
  static const float b[2] = {-1, 0.5f};
  return encode_safetensors({{"fc.weight", "F32", {2, 3}, {reinterpret_cast<const uint8_t*>(w), sizeof w}},
                             {"fc.bias", "F32", {2}, {reinterpret_cast<const uint8_t*>(b), sizeof b}}},
                            {{"format", "dptrain-weights"}});
}

std::string header_of(const std::vector<uint8_t>& bytes) {
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return std::string(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
}

std::vector<uint8_t> with_header(const std::string& json, size_t data_bytes) {
  std::vector<uint8_t> out(8 + json.size() + data_bytes, 0);
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, json.data(), json.size());
  return out;
}

std::string error_of(const std::vector<uint8_t>& bytes) {
  try {
    parse_safetensors(bytes, "x.safetensors");
  } catch (const InputError& e) {
    return e.what();
  }
  return "no error";
}

TEST(Safetensors, LayoutIsWhatPyTorchReads) {
  const std::vector<uint8_t> bytes = sample_file();
  const std::string header = header_of(bytes);
  EXPECT_EQ(header.size() % 8, 0u);
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"format\":\"dptrain-weights\"},\"fc.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],"
                         "\"data_offsets\":[0,24]},\"fc.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]}}",
                         0),
            0u)
      << header;
  EXPECT_EQ(bytes.size(), 8 + header.size() + 32);
  float first;
  std::memcpy(&first, bytes.data() + 8 + header.size(), 4);
  EXPECT_EQ(first, 1.0f);
}

TEST(Safetensors, RoundTrips) {
  const SafeTensorsFile f = parse_safetensors(sample_file(), "x");
  ASSERT_EQ(f.tensors.size(), 2u);
  const SafeTensor* b = f.find("fc.bias");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->shape, (std::vector<int64_t>{2}));
  float v[2];
  std::memcpy(v, b->data.data(), 8);
  EXPECT_EQ(v[0], -1.0f);
  EXPECT_EQ(v[1], 0.5f);
  EXPECT_EQ(f.metadata.at("format"), "dptrain-weights");
  EXPECT_EQ(f.find("nope"), nullptr);
}

TEST(Safetensors, RejectsEveryTruncation) {
  const std::vector<uint8_t> bytes = sample_file();
  for (int k = 0; k < 16; ++k) {
    const size_t cut = bytes.size() * static_cast<size_t>(k) / 16;
    const std::vector<uint8_t> head(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(cut));
    EXPECT_NE(error_of(head).find("x.safetensors: "), std::string::npos) << "cut at " << cut;
  }
}

TEST(Safetensors, RejectsLyingHeaders) {
  const auto t = [](const std::string& entries, size_t data) { return error_of(with_header(entries, data)); };
  EXPECT_NE(t(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12)
                .find("overlaps"), std::string::npos);
  EXPECT_NE(t(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})", 16)
                .find("gap"), std::string::npos);
  EXPECT_NE(t(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4).find("outside the data section"), std::string::npos);
  EXPECT_NE(t(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8).find("need 12"), std::string::npos);
  EXPECT_NE(t(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 12).find("4 bytes no tensor covers"), std::string::npos);
  EXPECT_NE(t(R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", 8).find("unknown dtype"), std::string::npos);
  EXPECT_NE(t(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8).find("non-negative"), std::string::npos);
  EXPECT_NE(t(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8).find("outside"), std::string::npos);
  EXPECT_NE(t(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", 8)
                .find("too large"), std::string::npos);
  EXPECT_NE(t(R"([1,2])", 0).find("not a JSON object"), std::string::npos);
  EXPECT_NE(t(R"({"a":)", 0).find("not valid JSON"), std::string::npos);
  EXPECT_NE(t(R"({"__metadata__":{"k":1}})", 0).find("not a string"), std::string::npos);
  EXPECT_NE(t(R"({"a":{"dtype":"F32","shape":[2]}})", 0).find("exactly dtype, shape and data_offsets"), std::string::npos);
  std::vector<uint8_t> huge(16, 0);
  huge[6] = 1;  // header length 2^48
  EXPECT_NE(error_of(huge).find("exceeds 100 MB"), std::string::npos);
}

TEST(WeightsFile, SavedAtomicallyAndRecognised) {
  const auto dir = std::filesystem::temp_directory_path() / ("dptrain_st_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::vector<float> w{1, 2, 3};
  save_weights((dir / "w.safetensors").string(), {{"fc.bias", {3}, w}}, "name: x\n");
  const SafeTensorsFile f = load_weights((dir / "w.safetensors").string());
  EXPECT_EQ(f.metadata.at("config"), "name: x\n");
  EXPECT_EQ(f.tensors.at(0).name, "fc.bias");
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    EXPECT_EQ(entry.path().filename(), "w.safetensors") << "no temporary left behind";
  // A valid safetensors file that dptrain did not write is refused by name.
  const std::vector<uint8_t> foreign = encode_safetensors({}, {});
  FILE* out = std::fopen((dir / "foreign.safetensors").c_str(), "wb");
  std::fwrite(foreign.data(), 1, foreign.size(), out);
  std::fclose(out);
  EXPECT_THROW(load_weights((dir / "foreign.safetensors").string()), InputError);
  EXPECT_THROW(load_weights((dir / "missing.safetensors").string()), InputError);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dptrain
