// The run folder's checkpoint files: naming, rotation and `--resume auto`. See io/checkpoint_dir.h.
#include "io/checkpoint_dir.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string_view>
#include <system_error>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace dptrain {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kStepPrefix = "ckpt-";
constexpr std::string_view kSuffix = ".safetensors";
constexpr const char* kBestName = "best.safetensors";
constexpr const char* kLatestName = "latest";
constexpr const char* kFinalName = "final.safetensors";

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

}  // namespace

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
std::string CheckpointDir::final_path() const { return (fs::path(folder_) / kFinalName).string(); }

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

std::vector<std::string> CheckpointDir::set_aside_after(int64_t step) {
  std::vector<std::string> moved;
  const fs::path aside = fs::path(folder_) / ("set-aside-" + std::to_string(step));
  for (const auto& [later, path] : list_steps()) {
    if (later <= step) continue;
    std::error_code ec;
    fs::create_directories(aside, ec);
    if (!ec) fs::rename(path, aside / fs::path(path).filename(), ec);
    if (ec) throw std::runtime_error(path + ": cannot move into " + aside.string() + ": " + ec.message());
    moved.push_back(fs::path(path).filename().string());
  }
  return moved;
}

std::string CheckpointDir::save_best(const std::vector<NamedTensor>& model,
                                     const std::vector<NamedTensor>& optimizer_state, const CheckpointState& state) {
  fs::create_directories(folder_);
  save_checkpoint(best_path(), model, optimizer_state, state);
  return best_path();
}

std::string CheckpointDir::save_best(const std::string& saved_step_file, const std::vector<NamedTensor>& model,
                                     const std::vector<NamedTensor>& optimizer_state, const CheckpointState& state) {
  // The same bytes under a second name: no second serialisation, hash, write and fsync. Rotation
  // later removes the step's name; the file lives on as best.safetensors.
  if (link_file_atomically(saved_step_file, best_path())) return best_path();
  return save_best(model, optimizer_state, state);
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

}  // namespace dptrain
