// Writing checkpoint and weights files (metadata encoding, checksums) and loading them through the
// checks of io/checkpoint_validation.h. See io/checkpoint_format.h.
#include "io/checkpoint_format.h"

#include <charconv>
#include <cmath>
#include <deque>
#include <map>
#include <stdexcept>
#include <utility>

#include <nlohmann/json.hpp>

#include "io/atomic_file.h"
#include "io/checkpoint_validation.h"
#include "io/sha256.h"

namespace dptrain {
namespace {

constexpr std::string_view kOptimizerPrefix = "optimizer.";

// ---------------------------------------------------------------------------------------------
// Writing

/// Byte views of the tensors; safetensors_layout checks each size against its shape. An integer
/// tensor's values are converted to I64 in `integers` (which must outlive the views).
std::vector<TensorRef> to_refs(const std::vector<NamedTensor>& tensors, std::deque<std::vector<int64_t>>& integers) {
  std::vector<TensorRef> refs;
  for (const NamedTensor& t : tensors) {
    if (t.integer) {
      std::vector<int64_t>& v = integers.emplace_back();
      for (float x : t.values) {
        if (!(x >= 0.0f && x < 9.2e18f && x == std::floor(x)))
          throw std::invalid_argument("integer tensor '" + t.name + "' holds " + std::to_string(x));
        v.push_back(static_cast<int64_t>(x));
      }
      refs.push_back({t.name, "I64", t.shape,
                      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(int64_t))});
      continue;
    }
    refs.push_back({t.name, "F32", t.shape,
                    std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(t.values.data()), t.values.size_bytes())});
  }
  return refs;
}

/// Adds the three checksum entries to `metadata` (which must hold everything else already).
void add_checksums(const std::vector<TensorRef>& refs, std::map<std::string, std::string>& metadata) {
  const std::vector<TensorEntry> table = safetensors_layout(refs);
  Sha256 data_hash;
  nlohmann::json per_tensor = nlohmann::json::object();
  for (const TensorRef& t : refs) {
    data_hash.update(t.bytes);
    per_tensor[t.name] = sha256_hex(t.bytes);
  }
  metadata["data_sha256"] = to_hex(data_hash.finish());
  metadata["tensor_sha256"] = per_tensor.dump();
  metadata.erase("header_sha256");
  metadata["header_sha256"] = sha256_hex(safetensors_header_json(table, metadata));
}

std::string format_double(double v) {
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof buf, v);  // shortest form that reads back exactly
  return std::string(buf, result.ptr);
}

std::map<std::string, std::string> checkpoint_metadata(const CheckpointState& s) {
  return {{"format", std::string(kCheckpointFormat)},
          {"format_version", std::string(kFormatVersion)},
          {"dptrain_version", std::string(kDptrainVersion)},
          {"config", s.config_yaml},
          {"epoch", std::to_string(s.epoch)},
          {"global_step", std::to_string(s.global_step)},
          {"samples_in_epoch", std::to_string(s.samples_in_epoch)},
          {"seed", std::to_string(s.seed)},
          {"world_size", std::to_string(s.world_size)},
          {"scheduler", s.scheduler_json},
          {"best_test_accuracy", format_double(s.best_test_accuracy)},
          {"epoch_metrics", s.epoch_metrics_json}};
}

// ---------------------------------------------------------------------------------------------
// Reading

/// The loaders' order of checks: format before checksums, so a file of another kind is named as
/// such rather than as damaged.
void verify(const SafeTensorsFile& file, std::string_view format) {
  check_format(file, format);
  verify_checksums(file);
}

}  // namespace

std::string optimizer_tensor_name(std::string_view param, std::string_view slot) {
  return std::string(kOptimizerPrefix) + std::string(param) + "." + std::string(slot);
}

std::vector<uint8_t> serialize_checkpoint(const std::vector<NamedTensor>& model,
                                          const std::vector<NamedTensor>& optimizer_state,
                                          const CheckpointState& state) {
  for (const NamedTensor& t : model) {
    if (t.name.starts_with(kOptimizerPrefix)) {
      throw std::invalid_argument("model tensor '" + t.name + "' uses the reserved prefix 'optimizer.'");
    }
  }
  for (const NamedTensor& t : optimizer_state) {
    if (!t.name.starts_with(kOptimizerPrefix)) {
      throw std::invalid_argument("optimizer tensor '" + t.name + "' does not start with 'optimizer.'");
    }
  }
  std::deque<std::vector<int64_t>> integers;
  std::vector<TensorRef> refs = to_refs(model, integers);
  const std::vector<TensorRef> optimizer_refs = to_refs(optimizer_state, integers);
  refs.insert(refs.end(), optimizer_refs.begin(), optimizer_refs.end());
  std::map<std::string, std::string> metadata = checkpoint_metadata(state);
  add_checksums(refs, metadata);
  return serialize_safetensors(refs, metadata);
}

void save_checkpoint(const std::string& path, const std::vector<NamedTensor>& model,
                     const std::vector<NamedTensor>& optimizer_state, const CheckpointState& state) {
  write_file_atomically(path, serialize_checkpoint(model, optimizer_state, state));
}

void save_weights(const std::string& path, const std::vector<NamedTensor>& model, const std::string& config_yaml) {
  std::deque<std::vector<int64_t>> integers;
  const std::vector<TensorRef> refs = to_refs(model, integers);
  std::map<std::string, std::string> metadata = {{"format", std::string(kWeightsFormat)},
                                                 {"format_version", std::string(kFormatVersion)},
                                                 {"dptrain_version", std::string(kDptrainVersion)},
                                                 {"config", config_yaml}};
  add_checksums(refs, metadata);
  write_file_atomically(path, serialize_safetensors(refs, metadata));
}

LoadedCheckpoint checkpoint_from_file(SafeTensorsFile file) {
  verify(file, kCheckpointFormat);
  LoadedCheckpoint loaded;
  loaded.path = file.source;
  loaded.state = parse_checkpoint_state(file.metadata, file.source);
  loaded.dptrain_version = file.metadata.at("dptrain_version");
  loaded.file = std::move(file);
  return loaded;
}

LoadedCheckpoint load_checkpoint(const std::string& path) { return checkpoint_from_file(read_safetensors(path)); }

void LoadedTensors::check_tensor_names(const std::vector<std::string>& expected) const {
  require_tensor_names(file, expected);
}

LoadedWeights load_weights(const std::string& path) {
  SafeTensorsFile file = read_safetensors(path);
  const auto format = file.metadata.find("format");
  if (format != file.metadata.end() && format->second == kCheckpointFormat) {
    LoadedCheckpoint checkpoint = checkpoint_from_file(std::move(file));
    file = std::move(checkpoint.file);
    std::erase_if(file.tensors, [](const SafeTensor& t) { return t.name.starts_with(kOptimizerPrefix); });
  } else {
    verify(file, kWeightsFormat);
  }
  LoadedWeights weights;
  weights.path = path;
  weights.config_yaml = file.metadata.at("config");
  weights.file = std::move(file);
  return weights;
}

}  // namespace dptrain
