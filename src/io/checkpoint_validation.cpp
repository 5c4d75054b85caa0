// Validation of dptrain files: metadata decoding and range checks, format and version, checksums,
// tensor names. See io/checkpoint_validation.h.
#include "io/checkpoint_validation.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <iterator>
#include <limits>
#include <set>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/sha256.h"

namespace dptrain {
namespace {

constexpr const char* kChecksumKeys[] = {"data_sha256", "tensor_sha256", "header_sha256"};
constexpr const char* kStateKeys[] = {"config",     "epoch",         "global_step", "samples_in_epoch",
                                      "seed",       "world_size",    "scheduler",   "best_test_accuracy",
                                      "epoch_metrics"};

const std::string& required(const std::map<std::string, std::string>& metadata, const std::string& key,
                            const std::string& source) {
  const auto it = metadata.find(key);
  if (it == metadata.end()) throw InputError(source, "metadata '" + key + "' is missing");
  return it->second;
}

template <typename T>
T parse_integer(const std::map<std::string, std::string>& metadata, const std::string& key, T min_value,
                const std::string& source, T max_value = std::numeric_limits<T>::max()) {
  const std::string& text = required(metadata, key, source);
  T value{};
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size() || value < min_value ||
      value > max_value) {
    throw InputError(source, "metadata '" + key + "' is '" + escape_control_chars(text) + "', expected an integer from " +
                                 std::to_string(min_value) + " to " + std::to_string(max_value));
  }
  return value;
}

/// Counts a run can reach and arithmetic on them cannot overflow: epochs are ints in the trainer,
/// and steps and samples stay far below 2^53 (exact in the doubles of the metrics).
constexpr int64_t kMaxEpoch = std::numeric_limits<int>::max() - 1;
constexpr int64_t kMaxCount = int64_t{1} << 50;

/// The epoch's running sums the checkpoint carries (trainer.cpp writes them; an absent one is 0, as
/// the trainer reads it): each a finite number, with 0 <= correct <= samples <= samples_in_epoch and
/// a loss sum >= 0.
void check_epoch_metrics(const nlohmann::json& metrics, int64_t samples_in_epoch, const std::string& source) {
  const auto number = [&](const char* key) {
    const auto it = metrics.find(key);
    if (it == metrics.end()) return 0.0;
    if (!it->is_number() || !std::isfinite(it->get<double>()))
      throw InputError(source, std::string("metadata 'epoch_metrics' has '") + key + "' = " +
                                   escape_control_chars(it->dump()) + ", expected a finite number");
    return it->get<double>();
  };
  const double loss_sum = number("loss_sum"), correct = number("correct"), samples = number("samples");
  if (!(samples >= 0 && samples <= static_cast<double>(samples_in_epoch) && correct >= 0 && correct <= samples &&
        loss_sum >= 0)) {
    throw InputError(source, "metadata 'epoch_metrics' is inconsistent (needs 0 <= correct <= samples <= "
                             "samples_in_epoch and loss_sum >= 0): " + escape_control_chars(metrics.dump()));
  }
}

bool is_hex_digest(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

}  // namespace

ChecksumStatus check_checksums(const SafeTensorsFile& file) {
  ChecksumStatus status;
  auto note = [&](std::string problem) {
    if (status.problem.empty()) status.problem = std::move(problem);
  };
  for (const SafeTensor& t : file.tensors) status.per_tensor[t.name] = "no checksum";

  // Per-tensor checksums first: they say which tensor is damaged even when the header is too.
  const auto per_tensor_it = file.metadata.find("tensor_sha256");
  if (per_tensor_it != file.metadata.end()) {
    const nlohmann::json sums = nlohmann::json::parse(per_tensor_it->second, nullptr, /*allow_exceptions=*/false);
    if (!sums.is_object()) {
      note("metadata 'tensor_sha256' is not a JSON object");
    } else {
      for (const SafeTensor& t : file.tensors) {
        const auto it = sums.find(t.name);
        if (it == sums.end() || !it->is_string() || !is_hex_digest(it->get<std::string>())) continue;
        status.per_tensor[t.name] = sha256_hex(t.data) == it->get<std::string>() ? "ok" : "MISMATCH";
      }
      if (sums.size() != file.tensors.size()) note("metadata 'tensor_sha256' does not list exactly the file's tensors");
    }
  }

  for (const char* key : kChecksumKeys) {
    const auto it = file.metadata.find(key);
    if (it == file.metadata.end()) {
      note(std::string("metadata '") + key + "' is missing");
    } else if (std::string(key) != "tensor_sha256" && !is_hex_digest(it->second)) {
      note(std::string("metadata '") + key + "' is not a SHA-256 hex digest");
    }
  }
  if (!file.header_canonical) {
    note("header bytes differ from the form dptrain writes: the header was edited or corrupted");
  }
  const auto header_it = file.metadata.find("header_sha256");
  if (header_it != file.metadata.end()) {
    std::vector<TensorEntry> table(file.tensors.begin(), file.tensors.end());
    std::map<std::string, std::string> covered = file.metadata;
    covered.erase("header_sha256");
    if (sha256_hex(safetensors_header_json(table, covered)) != header_it->second) {
      note("header checksum mismatch: the metadata or the tensor table is corrupted");
    }
  }
  for (const auto& [name, s] : status.per_tensor) {
    if (s == "MISMATCH") note("tensor '" + escape_control_chars(name) + "' checksum mismatch: its data is corrupted");
    if (s == "no checksum") note("tensor '" + escape_control_chars(name) + "' has no checksum in metadata 'tensor_sha256'");
  }
  const auto data_it = file.metadata.find("data_sha256");
  if (data_it != file.metadata.end() && data_it->second != file.data_sha256) {
    note("data checksum mismatch: the data section is corrupted");
  }
  return status;
}

void verify_checksums(const SafeTensorsFile& file) {
  const ChecksumStatus status = check_checksums(file);
  if (!status.problem.empty()) throw InputError(file.source, status.problem);
}

void check_format(const SafeTensorsFile& file, std::string_view format) {
  const auto it = file.metadata.find("format");
  if (it == file.metadata.end()) {
    throw InputError(file.source, "not a dptrain file (no 'format' metadata)");
  }
  if (it->second != format) {
    if (format == kCheckpointFormat && it->second == kWeightsFormat) {
      throw InputError(file.source, "is a weights file (format dptrain-weights), not a checkpoint: it has no "
                                    "optimizer state or progress to resume from");
    }
    throw InputError(file.source, "format '" + escape_control_chars(it->second) + "' is not " + std::string(format));
  }
  const std::string version = required(file.metadata, "format_version", file.source);
  if (version != kFormatVersion) {
    throw InputError(file.source, "format_version '" + escape_control_chars(version) + "' is not supported (this dptrain reads " +
                                      std::string(kFormatVersion) + ")");
  }
  std::set<std::string> allowed = {"format", "format_version", "dptrain_version", "config"};
  allowed.insert(std::begin(kChecksumKeys), std::end(kChecksumKeys));
  if (format == kCheckpointFormat) allowed.insert(std::begin(kStateKeys), std::end(kStateKeys));
  for (const auto& [key, value] : file.metadata) {
    if (!allowed.count(key)) throw InputError(file.source, "unknown metadata key '" + escape_control_chars(key) + "'");
  }
  required(file.metadata, "dptrain_version", file.source);
  required(file.metadata, "config", file.source);
  for (const SafeTensor& t : file.tensors) {
    // I64 only for state counters (batchnorm's num_batches_tracked, as PyTorch saves it).
    const bool counter = t.dtype == "I64" && t.name.ends_with(".num_batches_tracked");
    if (t.dtype != "F32" && !counter)
      throw InputError(file.source, "tensor '" + escape_control_chars(t.name) + "' has dtype " + t.dtype + ", expected F32");
  }
}

CheckpointState parse_checkpoint_state(const std::map<std::string, std::string>& metadata, const std::string& source) {
  CheckpointState s;
  s.config_yaml = required(metadata, "config", source);
  s.epoch = parse_integer<int64_t>(metadata, "epoch", 0, source, kMaxEpoch);
  s.global_step = parse_integer<int64_t>(metadata, "global_step", 0, source, kMaxCount);
  s.samples_in_epoch = parse_integer<int64_t>(metadata, "samples_in_epoch", 0, source, kMaxCount);
  s.seed = parse_integer<uint64_t>(metadata, "seed", 0, source);
  s.world_size = parse_integer<int>(metadata, "world_size", 1, source);
  s.scheduler_json = required(metadata, "scheduler", source);
  const nlohmann::json scheduler = nlohmann::json::parse(s.scheduler_json, nullptr, /*allow_exceptions=*/false);
  if (!scheduler.is_object()) throw InputError(source, "metadata 'scheduler' is not a JSON object");
  s.epoch_metrics_json = required(metadata, "epoch_metrics", source);
  const nlohmann::json metrics = nlohmann::json::parse(s.epoch_metrics_json, nullptr, /*allow_exceptions=*/false);
  if (!metrics.is_object()) throw InputError(source, "metadata 'epoch_metrics' is not a JSON object");
  check_epoch_metrics(metrics, s.samples_in_epoch, source);
  const std::string accuracy = required(metadata, "best_test_accuracy", source);
  const auto [end, error] = std::from_chars(accuracy.data(), accuracy.data() + accuracy.size(), s.best_test_accuracy);
  if (accuracy.empty() || error != std::errc() || end != accuracy.data() + accuracy.size() ||
      !std::isfinite(s.best_test_accuracy)) {
    throw InputError(source, "metadata 'best_test_accuracy' is '" + escape_control_chars(accuracy) +
                                 "', expected a finite number");
  }
  return s;
}

void require_tensor_names(const SafeTensorsFile& file, const std::vector<std::string>& expected) {
  const std::set<std::string> wanted(expected.begin(), expected.end());
  for (const std::string& name : expected) {
    if (file.find(name) == nullptr) throw InputError(file.source, "tensor '" + name + "' is missing");
  }
  for (const SafeTensor& t : file.tensors) {
    if (!wanted.count(t.name)) {
      throw InputError(file.source, "has tensor '" + escape_control_chars(t.name) + "' that this model/optimizer does not (another config?)");
    }
  }
}

std::optional<std::string> non_finite_weights_problem(std::string_view name, std::span<const float> values) {
  const auto bad = std::count_if(values.begin(), values.end(), [](float v) { return !std::isfinite(v); });
  if (bad == 0) return std::nullopt;
  return "tensor '" + escape_control_chars(name) + "' holds " + std::to_string(bad) +
         " values that are NaN or Inf (weights of a diverged model?)";
}

}  // namespace dptrain
