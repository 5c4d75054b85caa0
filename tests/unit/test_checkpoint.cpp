// Checkpoints and weights files: round trip, the documented checksum scheme, detection of every
// truncation and byte flip, metadata validation, run-folder rotation, `--resume auto` fallback and
// the inspect report.
#include <gtest/gtest.h>

#include <unistd.h>
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/checkpoint_dir.h"
#include "io/checkpoint_format.h"
#include "io/checkpoint_inspect.h"
#include "io/checkpoint_validation.h"
#include "io/sha256.h"

namespace dptrain {
namespace {

namespace fs = std::filesystem;

/// A small model's state_dict and its Adadelta state, with distinct deterministic values.
struct Fixture {
  std::vector<std::pair<std::string, std::vector<int64_t>>> params = {
      {"conv1.weight", {32, 1, 3, 3}}, {"conv1.bias", {32}}, {"fc1.weight", {10, 8}}, {"fc1.bias", {10}}};
  std::vector<std::vector<float>> values;  // params, then square_avg and acc_delta per param
  std::vector<NamedTensor> model, optimizer;
  CheckpointState state;

  explicit Fixture(float offset = 0.0f) {
    for (size_t i = 0; i < 3 * params.size(); ++i) {
      const auto& shape = params[i % params.size()].second;
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      std::vector<float> v(n);
      for (int64_t k = 0; k < n; ++k) v[k] = offset + 0.001f * static_cast<float>(k) - 0.37f * static_cast<float>(i);
      values.push_back(std::move(v));
    }
    for (size_t i = 0; i < params.size(); ++i) {
      model.push_back({params[i].first, params[i].second, values[i]});
    }
    for (size_t i = 0; i < params.size(); ++i) {
      optimizer.push_back({optimizer_tensor_name(params[i].first, "square_avg"), params[i].second,
                           values[params.size() + i]});
      optimizer.push_back({optimizer_tensor_name(params[i].first, "acc_delta"), params[i].second,
                           values[2 * params.size() + i]});
    }
    state.config_yaml = "model:\n  layers:\n    - type: conv2d  # ünïcode comment\n";
    state.epoch = 3;
    state.global_step = 1234;
    state.samples_in_epoch = 640;
    state.seed = UINT64_MAX;
    state.world_size = 4;
    state.scheduler_json = R"({"last_lr":0.25})";
    state.epoch_metrics_json = R"({"loss_sum":12.5,"correct":600.0,"samples":640.0})";
    state.best_test_accuracy = 0.9912345678901234;
  }

  std::vector<std::string> all_names() const {
    std::vector<std::string> names;
    for (const auto& t : model) names.push_back(t.name);
    for (const auto& t : optimizer) names.push_back(t.name);
    return names;
  }
};

std::vector<TensorRef> refs_of(const std::vector<NamedTensor>& tensors) {
  std::vector<TensorRef> refs;
  for (const NamedTensor& t : tensors) {
    refs.push_back({t.name, "F32", t.shape, {reinterpret_cast<const uint8_t*>(t.values.data()), t.values.size_bytes()}});
  }
  return refs;
}

/// The checksum scheme exactly as checkpoint_format.h documents it, written independently of the code.
std::vector<uint8_t> forge(const std::vector<TensorRef>& refs, std::map<std::string, std::string> metadata) {
  Sha256 data;
  nlohmann::json per_tensor = nlohmann::json::object();
  for (const TensorRef& t : refs) {
    data.update(t.bytes);
    per_tensor[t.name] = sha256_hex(t.bytes);
  }
  metadata["data_sha256"] = to_hex(data.finish());
  metadata["tensor_sha256"] = per_tensor.dump();
  metadata["header_sha256"] = sha256_hex(safetensors_header_json(safetensors_layout(refs), metadata));
  return serialize_safetensors(refs, metadata);
}

std::map<std::string, std::string> checkpoint_metadata_of(const CheckpointState& s) {
  return {{"format", "dptrain-checkpoint"}, {"format_version", "1"},  {"dptrain_version", std::string(kDptrainVersion)},
          {"config", s.config_yaml},        {"epoch", "3"},           {"global_step", "1234"},
          {"samples_in_epoch", "640"},      {"seed", "18446744073709551615"}, {"world_size", "4"},
          {"scheduler", s.scheduler_json},  {"best_test_accuracy", "0.9912345678901234"},
          {"epoch_metrics", s.epoch_metrics_json}};
}

LoadedCheckpoint load_bytes(const std::vector<uint8_t>& bytes) {
  return checkpoint_from_file(parse_safetensors(bytes, "ckpt"));
}

void expect_load_error(const std::vector<uint8_t>& bytes, const std::string& needle) {
  try {
    load_bytes(bytes);
    ADD_FAILURE() << "accepted; expected '" << needle << "'";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what() << "\nexpected: " << needle;
  }
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dptrain-ckpt-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

TEST_F(CheckpointTest, RoundTrip) {
  const Fixture f;
  save_checkpoint(path("c.safetensors"), f.model, f.optimizer, f.state);
  const LoadedCheckpoint loaded = load_checkpoint(path("c.safetensors"));
  EXPECT_EQ(loaded.path, path("c.safetensors"));
  EXPECT_EQ(loaded.state, f.state);  // includes the double bit for bit and seed = 2^64-1
  EXPECT_EQ(loaded.dptrain_version, kDptrainVersion);
  for (const NamedTensor& t : f.model) {
    EXPECT_EQ(loaded.tensor(t.name, t.shape), std::vector<float>(t.values.begin(), t.values.end())) << t.name;
  }
  for (const NamedTensor& t : f.optimizer) {
    std::vector<float> out(t.values.size());
    loaded.copy_tensor(t.name, t.shape, out);
    EXPECT_EQ(out, std::vector<float>(t.values.begin(), t.values.end())) << t.name;
  }
  EXPECT_EQ(loaded.file.tensors[0].name, "conv1.weight");
  EXPECT_EQ(loaded.file.find("optimizer.conv1.weight.square_avg")->shape, (std::vector<int64_t>{32, 1, 3, 3}));
  EXPECT_NO_THROW(loaded.check_tensor_names(f.all_names()));
  EXPECT_EQ(loaded.file.metadata.at("format"), "dptrain-checkpoint");
  EXPECT_EQ(loaded.file.metadata.at("data_sha256"), loaded.file.data_sha256);
}

TEST(Checkpoint, ChecksumsFollowTheDocumentedScheme) {
  const Fixture f;
  std::vector<TensorRef> refs = refs_of(f.model);
  for (const TensorRef& r : refs_of(f.optimizer)) refs.push_back(r);
  EXPECT_EQ(serialize_checkpoint(f.model, f.optimizer, f.state), forge(refs, checkpoint_metadata_of(f.state)));
}

TEST(Checkpoint, EveryTruncationIsRejected) {
  const Fixture f;
  const std::vector<uint8_t> bytes = serialize_checkpoint(f.model, f.optimizer, f.state);
  ASSERT_NO_THROW(load_bytes(bytes));
  for (size_t k = 0; k < 16; ++k) {
    const size_t size = k * bytes.size() / 16;
    const std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(size));
    EXPECT_THROW(load_bytes(cut), InputError) << "truncated to " << size;
  }
  const std::vector<uint8_t> one_short(bytes.begin(), bytes.end() - 1);
  EXPECT_THROW(load_bytes(one_short), InputError);
}

TEST(Checkpoint, EveryByteFlipIsRejected) {
  const Fixture f;
  const std::vector<uint8_t> bytes = serialize_checkpoint(f.model, f.optimizer, f.state);
  const size_t header_end = 8 + bytes[0] + 256 * bytes[1];
  ASSERT_GT(header_end, 1000u);  // the header is a real share of the positions below
  // 64 evenly spaced positions (length prefix, header and data) with several masks...
  for (size_t k = 0; k < 64; ++k) {
    const size_t at = k * bytes.size() / 64;
    for (uint8_t mask : {0x01, 0x20, 0x80, 0xff}) {
      std::vector<uint8_t> bad = bytes;
      bad[at] ^= mask;
      EXPECT_THROW(load_bytes(bad), InputError) << "byte " << at << " ^ " << int{mask};
    }
  }
  // ...and one bit of every header byte, where a flip may leave valid JSON.
  for (size_t at = 0; at < header_end; ++at) {
    std::vector<uint8_t> bad = bytes;
    bad[at] ^= 0x01;
    EXPECT_THROW(load_bytes(bad), InputError) << "byte " << at;
  }
}

TEST(Checkpoint, HeaderEditsThatKeepValidJsonAreNamed) {
  const Fixture f;
  const std::vector<uint8_t> bytes = serialize_checkpoint(f.model, f.optimizer, f.state);
  const std::string header(bytes.begin() + 8, bytes.begin() + 8 + bytes[0] + 256 * bytes[1]);

  std::vector<uint8_t> config_edit = bytes;  // "conv2d" -> "conv3d" inside the config text
  config_edit[8 + header.find("conv2d") + 4] = '3';
  expect_load_error(config_edit, "ckpt: header checksum mismatch");

  std::vector<uint8_t> epoch_edit = bytes;  // "epoch":"3" -> "epoch":"4"
  epoch_edit[8 + header.find(R"("epoch":"3")") + 9] = '4';
  expect_load_error(epoch_edit, "header checksum mismatch");

  std::vector<uint8_t> rename = bytes;  // a tensor renamed: structure fine, checksums not
  rename[8 + header.find(R"("fc1.bias":{"dtype")") + 3] = '2';
  expect_load_error(rename, "ckpt: header checksum mismatch");

  std::vector<uint8_t> padding = bytes;  // a padding space becomes a tab: same JSON meaning
  ASSERT_EQ(header.back(), ' ') << "this fixture's header needs padding";
  padding[8 + header.size() - 1] = '\t';
  expect_load_error(padding, "header bytes differ from the form dptrain writes");

  std::vector<uint8_t> data = bytes;  // a data byte of fc1.weight (third tensor)
  data[8 + header.size() + (288 + 32) * 4 + 5] ^= 0x10;
  expect_load_error(data, "tensor 'fc1.weight' checksum mismatch");
}

TEST(Checkpoint, MetadataIsValidated) {
  const Fixture f;
  std::vector<TensorRef> refs = refs_of(f.model);
  const auto good = checkpoint_metadata_of(f.state);
  ASSERT_NO_THROW(load_bytes(forge(refs, good)));
  auto with = [&](const std::string& key, const std::optional<std::string>& value) {
    auto m = good;
    if (value) m[key] = *value; else m.erase(key);
    return forge(refs, m);
  };
  expect_load_error(with("format", std::nullopt), "ckpt: not a dptrain file (no 'format' metadata)");
  expect_load_error(with("format", "dptrain-weights"), "is a weights file");
  expect_load_error(with("format", "gguf"), "format 'gguf' is not dptrain-checkpoint");
  expect_load_error(with("format_version", "2"), "format_version '2' is not supported");
  expect_load_error(with("format_version", std::nullopt), "metadata 'format_version' is missing");
  expect_load_error(with("extra", "x"), "unknown metadata key 'extra'");
  expect_load_error(with("config", std::nullopt), "metadata 'config' is missing");
  expect_load_error(with("dptrain_version", std::nullopt), "metadata 'dptrain_version' is missing");
  for (const char* bad : {"-1", "1.5", "", " 1", "1 ", "+1", "0x10", "99999999999999999999"}) {
    expect_load_error(with("epoch", bad), "metadata 'epoch' is '" + std::string(bad) + "', expected an integer from 0 to ");
  }
  // Beyond what the trainer's int epoch and its counts hold: refused, not truncated.
  expect_load_error(with("epoch", "4294967295"), "metadata 'epoch' is '4294967295', expected an integer from 0 to 2147483646");
  expect_load_error(with("global_step", "9223372036854775807"), "metadata 'global_step'");
  expect_load_error(with("samples_in_epoch", "9223372036854775807"), "metadata 'samples_in_epoch'");
  expect_load_error(with("global_step", "-5"), "metadata 'global_step'");
  expect_load_error(with("samples_in_epoch", std::nullopt), "metadata 'samples_in_epoch' is missing");
  expect_load_error(with("seed", "-1"), "metadata 'seed'");
  expect_load_error(with("world_size", "0"), "metadata 'world_size' is '0', expected an integer from 1 to ");
  expect_load_error(with("world_size", "4294967297"), "metadata 'world_size'");
  expect_load_error(with("scheduler", "[1]"), "metadata 'scheduler' is not a JSON object");
  expect_load_error(with("scheduler", "{"), "metadata 'scheduler' is not a JSON object");
  expect_load_error(with("epoch_metrics", "3"), "metadata 'epoch_metrics' is not a JSON object");
  expect_load_error(with("epoch_metrics", std::nullopt), "metadata 'epoch_metrics' is missing");
  // The epoch's running sums: numbers, finite, consistent with samples_in_epoch (640 here).
  expect_load_error(with("epoch_metrics", R"({"loss_sum":"x","correct":1,"samples":2})"),
                    "metadata 'epoch_metrics' has 'loss_sum' = \"x\", expected a finite number");
  expect_load_error(with("epoch_metrics", R"({"loss_sum":1,"correct":1,"samples":1e300})"),
                    "metadata 'epoch_metrics' is inconsistent");
  expect_load_error(with("epoch_metrics", R"({"loss_sum":1,"correct":5,"samples":4})"),
                    "metadata 'epoch_metrics' is inconsistent");
  expect_load_error(with("epoch_metrics", R"({"loss_sum":-1,"correct":0,"samples":0})"),
                    "metadata 'epoch_metrics' is inconsistent");
  EXPECT_NO_THROW(load_bytes(with("epoch_metrics", "{}")));  // absent sums are 0, as the trainer reads them
  for (const char* bad : {"nan", "inf", "-inf", "0.5x", "", "1e999"}) {
    expect_load_error(with("best_test_accuracy", bad), "metadata 'best_test_accuracy'");
  }

  // Checksums missing entirely, or not hex.
  expect_load_error(serialize_safetensors(refs, good), "metadata 'data_sha256' is missing");
  const std::vector<double> f64 = {1.0};
  std::vector<TensorRef> with_f64 = refs;
  with_f64.push_back({"d", "F64", {1}, {reinterpret_cast<const uint8_t*>(f64.data()), 8}});
  expect_load_error(forge(with_f64, good), "tensor 'd' has dtype F64, expected F32");
}

TEST(Checkpoint, SaveRejectsCallerErrors) {
  Fixture f;
  auto model = f.model;
  model[0].name = "optimizer.x";
  EXPECT_THROW(serialize_checkpoint(model, f.optimizer, f.state), std::invalid_argument);
  auto optimizer = f.optimizer;
  optimizer[0].name = "conv1.weight.square_avg";
  EXPECT_THROW(serialize_checkpoint(f.model, optimizer, f.state), std::invalid_argument);
  model = f.model;
  model[1].shape = {33};
  EXPECT_THROW(serialize_checkpoint(model, f.optimizer, f.state), std::invalid_argument);
  model = f.model;
  model.push_back(model[0]);
  EXPECT_THROW(serialize_checkpoint(model, f.optimizer, f.state), std::invalid_argument);
}

TEST_F(CheckpointTest, TensorNameAndShapeChecksNameTheTensor) {
  const Fixture f;
  save_checkpoint(path("c.safetensors"), f.model, f.optimizer, f.state);
  const LoadedCheckpoint loaded = load_checkpoint(path("c.safetensors"));
  auto names = f.all_names();
  names.push_back("conv2.weight");
  try {
    loaded.check_tensor_names(names);
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), path("c.safetensors") + ": tensor 'conv2.weight' is missing");
  }
  names = f.all_names();
  names.erase(names.begin() + 5);  // the optimizer state of another optimizer would look like this
  EXPECT_THROW(loaded.check_tensor_names(names), InputError);
  try {
    loaded.tensor("conv1.weight", {32, 1, 5, 5});
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'conv1.weight' has shape [32, 1, 3, 3], expected [32, 1, 5, 5]"),
              std::string::npos);
  }
}

TEST_F(CheckpointTest, WeightsFiles) {
  const Fixture f;
  save_weights(path("final.safetensors"), f.model, f.state.config_yaml);
  const LoadedWeights weights = load_weights(path("final.safetensors"));
  EXPECT_EQ(weights.config_yaml, f.state.config_yaml);
  ASSERT_EQ(weights.file.tensors.size(), f.model.size());
  for (const NamedTensor& t : f.model) {
    EXPECT_EQ(weights.tensor(t.name, t.shape), std::vector<float>(t.values.begin(), t.values.end()));
  }
  std::vector<std::string> model_names;
  for (const auto& t : f.model) model_names.push_back(t.name);
  EXPECT_NO_THROW(weights.check_tensor_names(model_names));
  EXPECT_EQ(weights.file.metadata.at("format"), "dptrain-weights");

  // A checkpoint also serves as weights, without its optimizer state.
  save_checkpoint(path("c.safetensors"), f.model, f.optimizer, f.state);
  const LoadedWeights from_checkpoint = load_weights(path("c.safetensors"));
  EXPECT_NO_THROW(from_checkpoint.check_tensor_names(model_names));
  EXPECT_EQ(from_checkpoint.file.tensors.size(), f.model.size());

  // But weights cannot resume training, and plain safetensors are not dptrain files.
  try {
    load_checkpoint(path("final.safetensors"));
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("is a weights file"), std::string::npos) << e.what();
  }
  write_safetensors(path("plain.safetensors"), refs_of(f.model), {});
  EXPECT_THROW(load_weights(path("plain.safetensors")), InputError);

  // Weights files are checksummed like checkpoints.
  std::vector<uint8_t> bytes = read_bytes(path("final.safetensors"));
  bytes[bytes.size() - 3] ^= 1;
  write_bytes(path("bad.safetensors"), bytes);
  EXPECT_THROW(load_weights(path("bad.safetensors")), InputError);
}

// best.safetensors of the step just saved is that step's file under a second name (a hard link):
// one write instead of two. It stays whole when rotation removes the step's name, and a later best
// replaces it atomically without touching the older step file it was linked to.
TEST_F(CheckpointTest, BestOfTheStepJustSavedIsThatFileAndOutlivesRotation) {
  const Fixture f;
  CheckpointDir run((dir_ / "run").string(), 1);
  const std::string saved = run.save(100, f.model, f.optimizer, f.state);
  EXPECT_EQ(run.save_best(saved, f.model, f.optimizer, f.state), run.best_path());
  struct stat step_stat{}, best_stat{};
  ASSERT_EQ(::stat(saved.c_str(), &step_stat), 0);
  ASSERT_EQ(::stat(run.best_path().c_str(), &best_stat), 0);
  EXPECT_EQ(step_stat.st_ino, best_stat.st_ino);  // one file, two names
  EXPECT_EQ(read_bytes(saved), read_bytes(run.best_path()));
  run.save_best(saved, f.model, f.optimizer, f.state);  // already its name: rename() does nothing

  CheckpointState later = f.state;
  later.global_step = 200;
  later.best_test_accuracy = 0.5;
  const std::string saved200 = run.save(200, f.model, f.optimizer, later);  // keep 1: step 100's name goes
  EXPECT_FALSE(fs::exists(saved));
  EXPECT_EQ(load_checkpoint(run.best_path()).state.global_step, f.state.global_step);  // whole, still step 100's
  run.save_best(saved200, f.model, f.optimizer, later);
  EXPECT_EQ(load_checkpoint(run.best_path()).state.global_step, 200);
  EXPECT_EQ(load_checkpoint(saved200).state.global_step, 200);
  for (const auto& entry : fs::directory_iterator(dir_ / "run"))  // no temp names left behind
    EXPECT_EQ(entry.path().filename().string().find(".tmp."), std::string::npos) << entry.path();
}

TEST_F(CheckpointTest, RunFolderRotationKeepsNewestAndBest) {
  const Fixture f;
  CheckpointDir run((dir_ / "run").string(), 2);
  EXPECT_FALSE(run.resolve_auto().path);  // no folder yet
  EXPECT_TRUE(run.resolve_auto().warnings.empty());
  run.save_best(f.model, f.optimizer, f.state);
  for (int64_t step : {100, 200, 300, 400}) {
    EXPECT_EQ(run.save(step, f.model, f.optimizer, f.state), run.step_path(step));
  }
  EXPECT_EQ(fs::path(run.step_path(400)).filename(), "ckpt-00000400.safetensors");
  const auto steps = run.list_steps();
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_EQ(steps[0].first, 300);
  EXPECT_EQ(steps[1].first, 400);
  EXPECT_TRUE(fs::exists(run.best_path()));
  std::ifstream latest(run.latest_path());
  std::string named;
  std::getline(latest, named);
  EXPECT_EQ(named, "ckpt-00000400.safetensors");
  const auto resolved = run.resolve_auto();
  EXPECT_EQ(resolved.path, run.step_path(400));
  EXPECT_TRUE(resolved.warnings.empty());

  // A save at a lower step (after resuming an older checkpoint) is what `latest` names: it survives
  // rotation even though it is the oldest by step.
  CheckpointDir keep_one((dir_ / "run").string(), 1);
  keep_one.save(50, f.model, f.optimizer, f.state);
  EXPECT_TRUE(fs::exists(keep_one.step_path(50)));
  EXPECT_EQ(keep_one.resolve_auto().path, keep_one.step_path(50));
  EXPECT_THROW(CheckpointDir("x", 0), std::invalid_argument);
  EXPECT_THROW(run.step_path(-1), std::invalid_argument);
  EXPECT_EQ(fs::path(run.step_path(123456789012)).filename(), "ckpt-123456789012.safetensors");
}

TEST_F(CheckpointTest, ResumeAutoFallsBackPastCorruptFiles) {
  CheckpointDir run(dir_.string(), 3);
  for (int64_t step : {10, 20, 30}) {
    Fixture f(static_cast<float>(step));
    f.state.global_step = step;
    run.save(step, f.model, f.optimizer, f.state);
  }
  // Newest (named by latest) corrupted in its data, the next one truncated.
  std::vector<uint8_t> bytes = read_bytes(run.step_path(30));
  bytes[bytes.size() / 2 + 1000] ^= 0x40;
  write_bytes(run.step_path(30), bytes);
  bytes = read_bytes(run.step_path(20));
  bytes.resize(bytes.size() - 100);
  write_bytes(run.step_path(20), bytes);

  auto resolved = run.resolve_auto();
  ASSERT_TRUE(resolved.path);
  EXPECT_EQ(*resolved.path, run.step_path(10));
  EXPECT_EQ(load_checkpoint(*resolved.path).state.global_step, 10);
  ASSERT_EQ(resolved.warnings.size(), 2u);
  EXPECT_EQ(resolved.warnings[0].rfind(run.step_path(30) + ": ", 0), 0u) << resolved.warnings[0];
  EXPECT_EQ(resolved.warnings[1].rfind(run.step_path(20) + ": ", 0), 0u) << resolved.warnings[1];

  // `latest` missing or naming something else: warn and go by step order.
  fs::remove(run.latest_path());
  resolved = run.resolve_auto();
  EXPECT_EQ(resolved.path, run.step_path(10));
  EXPECT_NE(resolved.warnings.at(0).find("missing"), std::string::npos);
  std::ofstream(run.latest_path()) << "../../etc/passwd\n";
  resolved = run.resolve_auto();
  EXPECT_EQ(resolved.path, run.step_path(10));
  EXPECT_NE(resolved.warnings.at(0).find("not a ckpt-<step>.safetensors file"), std::string::npos);

  // All corrupt: nothing to resume, one warning per file.
  bytes = read_bytes(run.step_path(10));
  bytes[3] ^= 1;
  write_bytes(run.step_path(10), bytes);
  resolved = run.resolve_auto();
  EXPECT_FALSE(resolved.path);
  EXPECT_EQ(resolved.warnings.size(), 4u);
}

TEST_F(CheckpointTest, ResumeAutoFollowsLatestAndNotesNewerFiles) {
  const Fixture f;
  CheckpointDir run(dir_.string(), 5);
  run.save(10, f.model, f.optimizer, f.state);
  // An interrupted save: ckpt-20 written, `latest` not yet updated.
  save_checkpoint(run.step_path(20), f.model, f.optimizer, f.state);
  const auto resolved = run.resolve_auto();
  EXPECT_EQ(resolved.path, run.step_path(10));
  ASSERT_EQ(resolved.warnings.size(), 1u);
  EXPECT_NE(resolved.warnings[0].find("is newer than the checkpoint `latest` names"), std::string::npos);
}

// A foreign safetensors file's long metadata value is listed cut, with its length (one of 90 MB was
// printed whole); the file itself is valid.
TEST_F(CheckpointTest, InspectCutsLongMetadataValues) {
  const std::vector<float> v = {1.0f};
  const std::vector<TensorRef> refs = {{"w", "F32", {1}, {reinterpret_cast<const uint8_t*>(v.data()), 4}}};
  const std::vector<uint8_t> bytes = serialize_safetensors(refs, {{"note", std::string(1000, 'x')}});
  write_bytes(path("plain.safetensors"), bytes);
  const InspectReport report = inspect_report(path("plain.safetensors"));
  EXPECT_TRUE(report.valid) << report.text;
  EXPECT_NE(report.text.find("  note: " + std::string(200, 'x') + "... (1000 bytes)\n"), std::string::npos) << report.text;
  EXPECT_EQ(report.text.find(std::string(201, 'x')), std::string::npos);
}

// A checkpoint is valid whatever its values, but weights with NaN or Inf (which eval and predict
// refuse) are named on the verdict line.
TEST_F(CheckpointTest, InspectNamesNonFiniteWeights) {
  Fixture f;
  f.values[1][3] = std::numeric_limits<float>::quiet_NaN();  // conv1.bias
  f.values[1][4] = -std::numeric_limits<float>::infinity();
  save_checkpoint(path("nan.safetensors"), f.model, f.optimizer, f.state);
  const InspectReport report = inspect_report(path("nan.safetensors"));
  EXPECT_TRUE(report.valid) << report.text;
  const std::string verdict = "valid, but tensor 'conv1.bias' holds 2 values that are NaN or Inf (weights of a diverged model?)\n";
  ASSERT_GE(report.text.size(), verdict.size());
  EXPECT_EQ(report.text.substr(report.text.size() - verdict.size()), verdict) << report.text;
}

TEST_F(CheckpointTest, InspectReport) {
  const Fixture f;
  save_checkpoint(path("c.safetensors"), f.model, f.optimizer, f.state);
  InspectReport report = inspect_report(path("c.safetensors"));
  EXPECT_TRUE(report.valid) << report.text;
  EXPECT_NE(report.text.find("format: dptrain-checkpoint"), std::string::npos) << report.text;
  EXPECT_NE(report.text.find("global_step: 1234"), std::string::npos);
  // Epochs as the training messages number them (from 1); the file stores 3.
  EXPECT_NE(report.text.find("\n  epoch: 4 (counted from 1 as training messages count; stored as 3)\n"),
            std::string::npos)
      << report.text;
  EXPECT_NE(report.text.find("    - type: conv2d"), std::string::npos);  // config indented
  EXPECT_NE(report.text.find("conv1.weight"), std::string::npos);
  EXPECT_NE(report.text.find("[32, 1, 3, 3]"), std::string::npos);
  EXPECT_EQ(report.text.substr(report.text.size() - 6), "valid\n");

  // Damaged data: still lists everything and marks the one tensor.
  std::vector<uint8_t> bytes = read_bytes(path("c.safetensors"));
  bytes[bytes.size() - 1] ^= 1;  // last byte: optimizer.fc1.bias.acc_delta
  write_bytes(path("bad.safetensors"), bytes);
  report = inspect_report(path("bad.safetensors"));
  EXPECT_FALSE(report.valid);
  EXPECT_NE(report.text.find("global_step: 1234"), std::string::npos) << report.text;
  size_t mismatches = 0;
  for (size_t at = report.text.find("MISMATCH"); at != std::string::npos; at = report.text.find("MISMATCH", at + 1)) {
    ++mismatches;
  }
  EXPECT_EQ(mismatches, 1u) << report.text;
  EXPECT_NE(report.text.find("INVALID: " + path("bad.safetensors") +
                             ": tensor 'optimizer.fc1.bias.acc_delta' checksum mismatch"),
            std::string::npos)
      << report.text;
  EXPECT_EQ(report.problem,
            path("bad.safetensors") + ": tensor 'optimizer.fc1.bias.acc_delta' checksum mismatch: its data is corrupted");

  // Broken structure: what the header still says, then why it is invalid.
  bytes = read_bytes(path("c.safetensors"));
  bytes.resize(bytes.size() - 4);
  write_bytes(path("cut.safetensors"), bytes);
  report = inspect_report(path("cut.safetensors"));
  EXPECT_FALSE(report.valid);
  EXPECT_NE(report.text.find("tensor conv1.weight F32 [32, 1, 3, 3]"), std::string::npos) << report.text;
  EXPECT_NE(report.text.find("INVALID: "), std::string::npos);

  report = inspect_report(path("missing.safetensors"));
  EXPECT_FALSE(report.valid);
  EXPECT_NE(report.text.find("cannot open"), std::string::npos);

  // A plain safetensors file is structurally valid; it just has no checksums.
  write_safetensors(path("plain.safetensors"), refs_of(f.model), {});
  report = inspect_report(path("plain.safetensors"));
  EXPECT_TRUE(report.valid) << report.text;
  EXPECT_NE(report.text.find("plain safetensors"), std::string::npos);
}

}  // namespace
}  // namespace dptrain
