// Checkpoint and weights files on top of safetensors: metadata encoding, checksums, the run
// folder's rotation and `--resume auto`, and the `inspect` report.
#include "io/checkpoint.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>
#include <stdexcept>
#include <system_error>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/sha256.h"

namespace dptrain {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kOptimizerPrefix = "optimizer.";
constexpr std::string_view kStepPrefix = "ckpt-";
constexpr std::string_view kSuffix = ".safetensors";
constexpr const char* kBestName = "best.safetensors";
constexpr const char* kLatestName = "latest";

constexpr const char* kChecksumKeys[] = {"data_sha256", "tensor_sha256", "header_sha256"};
constexpr const char* kStateKeys[] = {"config",     "epoch",         "global_step", "samples_in_epoch",
                                      "seed",       "world_size",    "scheduler",   "best_test_accuracy",
                                      "epoch_metrics"};

// ---------------------------------------------------------------------------------------------
// Writing

/// Byte views of the tensors; safetensors_layout checks each size against its shape.
std::vector<TensorRef> to_refs(const std::vector<NamedTensor>& tensors) {
  std::vector<TensorRef> refs;
  for (const NamedTensor& t : tensors) {
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

const std::string& required(const std::map<std::string, std::string>& metadata, const std::string& key,
                            const std::string& source) {
  const auto it = metadata.find(key);
  if (it == metadata.end()) throw InputError(source, "metadata '" + key + "' is missing");
  return it->second;
}

template <typename T>
T parse_integer(const std::map<std::string, std::string>& metadata, const std::string& key, T min_value,
                const std::string& source) {
  const std::string& text = required(metadata, key, source);
  T value{};
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size() || value < min_value) {
    throw InputError(source, "metadata '" + key + "' is '" + escape_control_chars(text) + "', expected an integer >= " +
                                 std::to_string(min_value));
  }
  return value;
}

/// Per-tensor checksum status and the first integrity problem ("" when intact).
struct ChecksumStatus {
  std::string problem;
  std::map<std::string, std::string> per_tensor;  ///< name -> "ok" | "MISMATCH" | "no checksum"
};

bool is_hex_digest(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

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

/// Format, version and allowed metadata keys of a dptrain file of kind `format`.
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
    if (t.dtype != "F32") throw InputError(file.source, "tensor '" + escape_control_chars(t.name) + "' has dtype " + t.dtype + ", expected F32");
  }
}

void verify(const SafeTensorsFile& file, std::string_view format) {
  check_format(file, format);
  verify_checksums(file);
}

void check_names(const SafeTensorsFile& file, const std::vector<std::string>& expected) {
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

/// "ckpt-00000100.safetensors" -> 100; nullopt for any other name.
std::optional<int64_t> step_of(std::string_view name) {
  if (name.size() <= kStepPrefix.size() + kSuffix.size() || !name.starts_with(kStepPrefix) || !name.ends_with(kSuffix)) {
    return std::nullopt;
  }
  const std::string_view digits = name.substr(kStepPrefix.size(), name.size() - kStepPrefix.size() - kSuffix.size());
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) return std::nullopt;
  int64_t step = 0;
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  if (error != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return step;
}

std::string trim(std::string s) {
  const auto not_space = [](unsigned char c) { return !std::isspace(c); };
  s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
  s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
  return s;
}

// ---------------------------------------------------------------------------------------------
// inspect

std::string pad_to(std::string s, size_t width) {
  if (s.size() < width) s.append(width - s.size(), ' ');
  return s;
}

/// A checkpoint's 0-based `epoch` as training messages number it (from 1), and where in it the
/// checkpoint stands; "" when the value is not a plain count.
std::string epoch_as_counted(const std::string& value, const std::map<std::string, std::string>& metadata) {
  if (value.empty() || value.size() > 12 || !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return "";
  const int64_t epoch = std::stoll(value);
  const auto samples = metadata.find("samples_in_epoch");
  const std::string where = samples != metadata.end() && samples->second == "0" && epoch > 0
                                ? "not begun: epoch " + std::to_string(epoch) + " is complete; "
                                : "";
  return std::to_string(epoch + 1) + " (" + where + "counted from 1 as training messages count; stored as " + value + ")";
}

void append_metadata(std::string& out, const std::map<std::string, std::string>& metadata) {
  out += "metadata:\n";
  const auto format = metadata.find("format");
  const bool checkpoint = format != metadata.end() && format->second == kCheckpointFormat;
  for (const auto& [key, value] : metadata) {
    if (key == "epoch" && checkpoint && !epoch_as_counted(value, metadata).empty()) {
      out += "  epoch: " + epoch_as_counted(value, metadata) + "\n";
    } else if (key == "tensor_sha256") {
      out += "  tensor_sha256: (per tensor, below)\n";
    } else if (key == "config") {
      out += "  config: |\n";
      size_t start = 0;
      while (start < value.size()) {
        size_t end = value.find('\n', start);
        if (end == std::string::npos) end = value.size();
        out += "    " + escape_control_chars(value.substr(start, end - start)) + "\n";
        start = end + 1;
      }
    } else {
      out += "  " + escape_control_chars(key) + ": " + escape_control_chars(value) + "\n";
    }
  }
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
  std::vector<TensorRef> refs = to_refs(model);
  const std::vector<TensorRef> optimizer_refs = to_refs(optimizer_state);
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
  const std::vector<TensorRef> refs = to_refs(model);
  std::map<std::string, std::string> metadata = {{"format", std::string(kWeightsFormat)},
                                                 {"format_version", std::string(kFormatVersion)},
                                                 {"dptrain_version", std::string(kDptrainVersion)},
                                                 {"config", config_yaml}};
  add_checksums(refs, metadata);
  write_file_atomically(path, serialize_safetensors(refs, metadata));
}

void verify_checksums(const SafeTensorsFile& file) {
  const ChecksumStatus status = check_checksums(file);
  if (!status.problem.empty()) throw InputError(file.source, status.problem);
}

CheckpointState parse_checkpoint_state(const std::map<std::string, std::string>& metadata, const std::string& source) {
  CheckpointState s;
  s.config_yaml = required(metadata, "config", source);
  s.epoch = parse_integer<int64_t>(metadata, "epoch", 0, source);
  s.global_step = parse_integer<int64_t>(metadata, "global_step", 0, source);
  s.samples_in_epoch = parse_integer<int64_t>(metadata, "samples_in_epoch", 0, source);
  s.seed = parse_integer<uint64_t>(metadata, "seed", 0, source);
  s.world_size = parse_integer<int>(metadata, "world_size", 1, source);
  s.scheduler_json = required(metadata, "scheduler", source);
  const nlohmann::json scheduler = nlohmann::json::parse(s.scheduler_json, nullptr, /*allow_exceptions=*/false);
  if (!scheduler.is_object()) throw InputError(source, "metadata 'scheduler' is not a JSON object");
  s.epoch_metrics_json = required(metadata, "epoch_metrics", source);
  const nlohmann::json metrics = nlohmann::json::parse(s.epoch_metrics_json, nullptr, /*allow_exceptions=*/false);
  if (!metrics.is_object()) throw InputError(source, "metadata 'epoch_metrics' is not a JSON object");
  const std::string accuracy = required(metadata, "best_test_accuracy", source);
  const auto [end, error] = std::from_chars(accuracy.data(), accuracy.data() + accuracy.size(), s.best_test_accuracy);
  if (accuracy.empty() || error != std::errc() || end != accuracy.data() + accuracy.size() ||
      !std::isfinite(s.best_test_accuracy)) {
    throw InputError(source, "metadata 'best_test_accuracy' is '" + escape_control_chars(accuracy) +
                                 "', expected a finite number");
  }
  return s;
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

void LoadedCheckpoint::check_tensor_names(const std::vector<std::string>& expected) const {
  check_names(file, expected);
}

void LoadedWeights::check_tensor_names(const std::vector<std::string>& expected) const { check_names(file, expected); }

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

// ---------------------------------------------------------------------------------------------
// CheckpointDir

CheckpointDir::CheckpointDir(std::string folder, int keep) : folder_(std::move(folder)), keep_(keep) {
  if (keep_ < 1) throw std::invalid_argument("CheckpointDir: keep must be >= 1, got " + std::to_string(keep_));
}

std::string CheckpointDir::step_path(int64_t step) const {
  if (step < 0) throw std::invalid_argument("CheckpointDir: negative step " + std::to_string(step));
  char name[64];
  std::snprintf(name, sizeof name, "ckpt-%08lld.safetensors", static_cast<long long>(step));
  return (fs::path(folder_) / name).string();
}

std::string CheckpointDir::best_path() const { return (fs::path(folder_) / kBestName).string(); }
std::string CheckpointDir::latest_path() const { return (fs::path(folder_) / kLatestName).string(); }

std::vector<std::pair<int64_t, std::string>> CheckpointDir::list_steps() const {
  std::vector<std::pair<int64_t, std::string>> steps;
  std::error_code ec;
  for (fs::directory_iterator it(folder_, ec), end; !ec && it != end; it.increment(ec)) {
    const std::optional<int64_t> step = step_of(it->path().filename().string());
    if (step && it->is_regular_file(ec)) steps.emplace_back(*step, it->path().string());
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

std::string CheckpointDir::save(int64_t step, const std::vector<NamedTensor>& model,
                                const std::vector<NamedTensor>& optimizer_state, const CheckpointState& state) {
  const std::string path = step_path(step);
  fs::create_directories(folder_);
  save_checkpoint(path, model, optimizer_state, state);
  const std::string name = fs::path(path).filename().string();
  write_file_atomically(latest_path(), name + "\n");

  // Rotation runs only after `latest` names the new file, so a crash here loses nothing needed.
  const auto steps = list_steps();
  const size_t keep = static_cast<size_t>(keep_);
  const size_t excess = steps.size() > keep ? steps.size() - keep : 0;
  for (size_t i = 0; i < excess; ++i) {
    if (fs::path(steps[i].second).filename() == name) continue;
    std::error_code ec;
    fs::remove(steps[i].second, ec);
    if (ec && ec != std::errc::no_such_file_or_directory) {
      throw std::runtime_error(steps[i].second + ": cannot delete old checkpoint: " + ec.message());
    }
  }
  return path;
}

std::string CheckpointDir::save_best(const std::vector<NamedTensor>& model,
                                     const std::vector<NamedTensor>& optimizer_state, const CheckpointState& state) {
  fs::create_directories(folder_);
  save_checkpoint(best_path(), model, optimizer_state, state);
  return best_path();
}

CheckpointDir::Resolved CheckpointDir::resolve_auto() const {
  Resolved resolved;
  const auto steps = list_steps();
  std::vector<std::string> candidates;
  int64_t latest_step = -1;  // step of the file `latest` names, -1 if none usable

  std::error_code ec;
  if (fs::exists(latest_path(), ec)) {
    try {
      const std::string named = trim(read_whole_file(latest_path()));
      const std::optional<int64_t> step = step_of(named);
      if (step && named.find('/') == std::string::npos) {
        latest_step = *step;
        candidates.push_back((fs::path(folder_) / named).string());
      } else {
        resolved.warnings.push_back(latest_path() + ": names '" + escape_control_chars(named.substr(0, 80)) +
                                    "', not a ckpt-<step>.safetensors file; using the ckpt-* files by step");
      }
    } catch (const InputError& e) {
      resolved.warnings.push_back(std::string(e.what()) + "; using the ckpt-* files by step");
    }
  } else if (!steps.empty()) {
    resolved.warnings.push_back(latest_path() + ": missing; using the ckpt-* files by step");
  }
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    if (std::find(candidates.begin(), candidates.end(), it->second) == candidates.end()) candidates.push_back(it->second);
  }

  for (const std::string& path : candidates) {
    try {
      load_checkpoint(path);
    } catch (const InputError& e) {
      resolved.warnings.push_back(std::string(e.what()) + " (skipped; trying an older checkpoint)");
      continue;
    }
    resolved.path = path;
    break;
  }
  if (resolved.path && latest_step >= 0 && !steps.empty() && steps.back().first > latest_step &&
      resolved.path == candidates.front()) {
    resolved.warnings.push_back(steps.back().second + " is newer than the checkpoint `latest` names (an interrupted "
                                                      "save?); resuming from " + *resolved.path);
  }
  return resolved;
}

// ---------------------------------------------------------------------------------------------
// inspect

InspectReport inspect_bytes(std::span<const uint8_t> bytes, const std::string& source) {
  InspectReport report;
  std::string& out = report.text;
  out += "file: " + source + " (" + std::to_string(bytes.size()) + " bytes)\n";
  SafeTensorsFile file;
  try {
    file = parse_safetensors(bytes, source);
  } catch (const InputError& e) {
    out += describe_unvalidated_header(bytes);
    out += std::string("INVALID: ") + e.what() + "\n";
    return report;
  }
  const auto format_it = file.metadata.find("format");
  const std::string format = format_it == file.metadata.end() ? "" : format_it->second;
  const bool dptrain_file = format == kCheckpointFormat || format == kWeightsFormat;
  out += "format: " + (format.empty() ? std::string("(none: plain safetensors)") : escape_control_chars(format)) + "\n";
  out += "header: " + std::to_string(file.header_bytes) + " bytes, data: " + std::to_string(file.data_bytes) +
         " bytes, tensors: " + std::to_string(file.tensors.size()) + "\n";
  append_metadata(out, file.metadata);

  ChecksumStatus status;
  if (dptrain_file) status = check_checksums(file);
  std::vector<std::array<std::string, 4>> rows = {{"name", "dtype", "shape", "sha256"}};
  for (const SafeTensor& t : file.tensors) {
    rows.push_back({escape_control_chars(t.name), t.dtype, shape_to_string(t.shape), dptrain_file ? status.per_tensor[t.name] : "-"});
  }
  std::array<size_t, 4> width{};
  for (const auto& row : rows) {
    for (size_t c = 0; c < 4; ++c) width[c] = std::max(width[c], row[c].size());
  }
  out += "tensors:\n";
  for (const auto& row : rows) {
    out += "  " + pad_to(row[0], width[0] + 2) + pad_to(row[1], width[1] + 2) + pad_to(row[2], width[2] + 2) + row[3] +
           "\n";
  }

  if (!dptrain_file) {
    report.valid = true;
    out += "valid (structure only: a plain safetensors file has no dptrain checksums)\n";
    return report;
  }
  try {
    if (format == kCheckpointFormat) {
      check_format(file, kCheckpointFormat);
      if (!status.problem.empty()) throw InputError(source, status.problem);
      parse_checkpoint_state(file.metadata, source);
    } else {
      check_format(file, kWeightsFormat);
      if (!status.problem.empty()) throw InputError(source, status.problem);
    }
  } catch (const InputError& e) {
    out += std::string("INVALID: ") + e.what() + "\n";
    return report;
  }
  report.valid = true;
  out += "valid\n";
  return report;
}

InspectReport inspect_report(const std::string& path) {
  std::string bytes;
  try {
    bytes = read_whole_file(path);
  } catch (const InputError& e) {
    return {"file: " + path + "\nINVALID: " + e.what() + "\n", false};
  }
  return inspect_bytes(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), path);
}

}  // namespace dptrain
