#include "io/plan_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"

namespace dptrain {

namespace {

using nlohmann::json;

constexpr const char* kFormat = "dptrain-plans";
/// Bumped whenever a record's meaning or the key's fields change: older files are then stale.
constexpr int kVersion = 1;
/// A plan file larger than this is not one (a few hundred bytes per record).
constexpr uint64_t kMaxPlanFileBytes = uint64_t{64} << 20;
/// Machines (fingerprints) a shared cache keeps plans for, most recently written first: a second
/// GPU model, or a second build of dptrain, used on one account does not throw the first's away.
constexpr size_t kMaxMachines = 8;
/// cuDNN numbers its algorithms from 0; none has reached 16.
constexpr int kMaxAlgo = 64;
/// A plan file nests 5 levels; anything much deeper is not one. nlohmann parses deep nesting
/// without recursion but copies it recursively (a section of another machine is copied whole), so
/// a 200,000-deep array there overflowed the stack.
constexpr int kMaxJsonDepth = 32;

json fingerprint_json(const PlanFingerprint& f) {
  return json{{"gpu", f.gpu},
              {"compute_capability", std::to_string(f.cc_major) + "." + std::to_string(f.cc_minor)},
              {"sms", f.sms},
              {"driver", f.driver},
              {"cuda_runtime", f.runtime},
              {"cudnn", f.cudnn},
              {"cublas", f.cublas},
              {"build", f.build}};
}

/// `j` as an int, if it is an integer that fits one (a float or a wider integer would convert with
/// undefined behaviour or wrap: 2^32 + 3 would read as 3).
std::optional<int> int_of(const json& j) {
  if (j.is_number_unsigned()) {
    const auto v = j.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int>::max())) return std::nullopt;
    return static_cast<int>(v);
  }
  if (!j.is_number_integer()) return std::nullopt;
  const auto v = j.get<int64_t>();
  if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max()) return std::nullopt;
  return static_cast<int>(v);
}

int int_field(const json& j, const char* key) {
  const std::optional<int> v = int_of(j.at(key));
  if (!v) throw std::runtime_error(std::string("\"") + key + "\" is not an integer that fits an int");
  return *v;
}

/// Throws on missing or mistyped fields (nlohmann's exceptions, or std::runtime_error; the caller
/// reports the file corrupt).
PlanFingerprint fingerprint_from(const json& j) {
  PlanFingerprint f;
  f.gpu = j.at("gpu").get<std::string>();
  const std::string cc = j.at("compute_capability").get<std::string>();
  const size_t dot = cc.find('.');
  if (dot == std::string::npos) throw std::runtime_error("compute_capability is not major.minor");
  f.cc_major = std::atoi(cc.substr(0, dot).c_str());
  f.cc_minor = std::atoi(cc.substr(dot + 1).c_str());
  f.sms = int_field(j, "sms");
  f.driver = int_field(j, "driver");
  f.runtime = int_field(j, "cuda_runtime");
  f.cudnn = int_field(j, "cudnn");
  f.cublas = int_field(j, "cublas");
  f.build = j.at("build").get<std::string>();
  return f;
}

json records_json(const PlanBook& book) {
  json plans = json::object();
  for (const auto& [key, r] : book.records()) plans[key] = json{{"impl", r.impl}, {"algo", r.algo}, {"chunk", r.chunk}};
  return plans;
}

/// A record as stored, or nothing when it names an unknown implementation or holds numbers out of
/// range (a file from another dptrain, or edited by hand).
std::optional<PlanRecord> record_from(const json& j) {
  if (!j.is_object() || !j.contains("impl") || !j["impl"].is_string() || !j.contains("algo") || !j.contains("chunk"))
    return std::nullopt;
  const std::optional<int> algo = int_of(j["algo"]), chunk = int_of(j["chunk"]);
  if (!algo || !chunk) return std::nullopt;
  PlanRecord r{j["impl"].get<std::string>(), *algo, *chunk};
  const auto& names = plan_implementations();
  if (std::find(names.begin(), names.end(), r.impl) == names.end()) return std::nullopt;
  if (r.algo < 0 || r.algo >= kMaxAlgo || r.chunk < 0) return std::nullopt;
  return r;
}

/// Fills `book` from a "plans" object; returns how many records were dropped.
int read_records(const json& plans, PlanBook& book) {
  if (!plans.is_object()) throw std::runtime_error("\"plans\" is not an object");
  int dropped = 0;
  for (const auto& [key, value] : plans.items()) {
    if (const std::optional<PlanRecord> r = record_from(value))
      book.put(key, *r);
    else
      ++dropped;
  }
  return dropped;
}

/// Holds an exclusive flock on a lock file beside the plan file for its lifetime. A lock file of
/// its own (never renamed) is what every writer locks: the plan file itself is replaced by rename,
/// so a lock on it would be on an inode that the next writer no longer opens.
class PlanFileLock {
 public:
  explicit PlanFileLock(const std::string& path) : path_(path + ".lock") {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw std::runtime_error(path_ + ": cannot open the lock file: " + std::strerror(errno));
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd_);
      throw std::runtime_error(path_ + ": cannot lock: " + std::strerror(e));
    }
  }
  ~PlanFileLock() { ::close(fd_); }  // closing releases the lock
  PlanFileLock(const PlanFileLock&) = delete;
  PlanFileLock& operator=(const PlanFileLock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
};

/// An environment variable usable as a folder: set, and absolute (the XDG rule).
std::optional<std::string> absolute_env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || v[0] != '/') return std::nullopt;
  return std::string(v);
}

/// json::parse, refusing nesting deeper than kMaxJsonDepth (std::runtime_error).
json parse_bounded(const std::string& text) {
  return json::parse(text, [](int depth, json::parse_event_t, json&) {
    if (depth > kMaxJsonDepth) throw std::runtime_error("nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    return true;
  });
}

}  // namespace

std::string PlanFingerprint::describe() const {
  return gpu + " (sm " + std::to_string(cc_major) + "." + std::to_string(cc_minor) + ", " + std::to_string(sms) +
         " SMs), driver " + std::to_string(driver) + ", CUDA " + std::to_string(runtime) + ", cuDNN " +
         std::to_string(cudnn) + ", cuBLAS " + std::to_string(cublas) + ", build " + build;
}

std::string plan_key(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string key;
  for (const auto& [name, value] : fields) {
    if (!key.empty()) key += ';';
    key += name + '=' + value;
  }
  return key;
}

std::optional<PlanRecord> PlanBook::find(const std::string& key) {
  const auto it = records_.find(key);
  if (it == records_.end()) return std::nullopt;
  used_.insert(key);
  return it->second;
}

void PlanBook::put(const std::string& key, const PlanRecord& record) {
  records_[key] = record;
  used_.insert(key);
}

void PlanBook::erase(const std::string& key) {
  records_.erase(key);
  used_.erase(key);
}

void PlanBook::merge(const PlanBook& other, bool override) {
  for (const auto& [key, r] : other.records_)
    if (override || !records_.contains(key)) records_[key] = r;
}

PlanBook PlanBook::used() const {
  PlanBook out;
  for (const std::string& key : used_) out.records_[key] = records_.at(key);
  return out;
}

std::string PlanBook::serialize() const { return records_json(*this).dump(); }

PlanBook PlanBook::parse(const std::string& bytes) {
  PlanBook book;
  try {
    if (read_records(parse_bounded(bytes), book) != 0) throw std::runtime_error("a record is invalid");
  } catch (const json::exception& e) {
    throw std::runtime_error(std::string("plan records are not valid JSON: ") + e.what());
  }
  book.forget_use();
  return book;
}

namespace {

/// A plan file's contents: the running fingerprint's records and the other machines' sections
/// (kept as they are by a merge, most recent first), or why the file as a whole is unusable.
struct ParsedPlanFile {
  PlanBook mine;
  bool found = false;  ///< a section for this fingerprint exists
  int dropped = 0;     ///< its records that were invalid
  std::vector<json> others;
  std::vector<PlanFingerprint> other_fingerprints;
  std::optional<std::string> problem;
};

ParsedPlanFile parse_plan_file(const std::string& text, const PlanFingerprint& fp) {
  ParsedPlanFile out;
  try {
    const json j = parse_bounded(text);
    if (!j.is_object() || j.value("format", std::string()) != kFormat) {
      out.problem = "is not a dptrain plan file";
      return out;
    }
    if (!j.contains("version") || int_of(j["version"]) != kVersion) {
      out.problem = "is a plan file of another version (stale: this dptrain reads version " + std::to_string(kVersion) + ")";
      return out;
    }
    const json& machines = j.at("machines");
    if (!machines.is_array()) throw std::runtime_error("\"machines\" is not a list");
    for (const json& section : machines) {
      const PlanFingerprint made = fingerprint_from(section.at("fingerprint"));
      if (!section.at("plans").is_object()) throw std::runtime_error("\"plans\" is not an object");
      if (made == fp && !out.found) {
        out.found = true;
        out.dropped = read_records(section["plans"], out.mine);
        out.mine.forget_use();  // read, not used: nothing is marked until the planner looks
      } else if (!(made == fp)) {
        out.others.push_back(section);
        out.other_fingerprints.push_back(made);
      }
    }
  } catch (const json::parse_error& e) {
    out = ParsedPlanFile();
    out.problem = std::string("is corrupt or truncated (") + e.what() + ")";
  } catch (const std::exception& e) {
    out = ParsedPlanFile();
    out.problem = std::string("is corrupt (") + e.what() + ")";
  }
  return out;
}

/// The file's text: this fingerprint's section first, then up to kMaxMachines - 1 others.
std::string plan_file_text(const PlanBook& book, const PlanFingerprint& fp, const std::vector<json>& others) {
  json machines = json::array();
  machines.push_back(json{{"fingerprint", fingerprint_json(fp)}, {"plans", records_json(book)}});
  for (size_t i = 0; i < others.size() && machines.size() < kMaxMachines; ++i) machines.push_back(others[i]);
  const json j{{"format", kFormat}, {"version", kVersion}, {"machines", machines}};
  return j.dump(1) + "\n";
}

}  // namespace

std::string plan_file_text(const PlanBook& book, const PlanFingerprint& fp) { return plan_file_text(book, fp, {}); }

PlanFileRead read_plan_file(const std::string& path, const PlanFingerprint& fp) {
  PlanFileRead out;
  out.book.source = path;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return out;
  out.existed = true;
  const auto ignored = [&](const std::string& why) {
    out.warning = path + ": " + why + "; its plans are ignored and made afresh";
    return out;
  };
  std::string text;
  try {
    text = read_whole_file(path, kMaxPlanFileBytes);
  } catch (const std::exception& e) {
    return ignored(std::string("cannot be read (") + e.what() + ")");
  }
  ParsedPlanFile parsed = parse_plan_file(text, fp);
  if (parsed.problem) return ignored(*parsed.problem);
  if (!parsed.found) {
    std::string held = parsed.other_fingerprints.empty() ? std::string("none") : parsed.other_fingerprints[0].describe();
    if (parsed.other_fingerprints.size() > 1)
      held += " and " + std::to_string(parsed.other_fingerprints.size() - 1) + " more";
    out.warning = path + ": holds no plans for this run's " + fp.describe() + " (only for " + held +
                  ": foreign or stale); plans are made afresh and added";
    return out;
  }
  out.book = std::move(parsed.mine);
  out.book.source = path;
  if (parsed.dropped > 0)
    out.warning = path + ": " + std::to_string(parsed.dropped) +
                  " plan(s) name an unknown implementation or hold invalid numbers (stale); they are made afresh";
  return out;
}

void merge_into_plan_file(const std::string& path, const PlanBook& book, const PlanFingerprint& fp) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  const PlanFileLock lock(path);
  ParsedPlanFile current;  // a missing or unusable file is replaced (its reader warned)
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) {
    try {
      current = parse_plan_file(read_whole_file(path, kMaxPlanFileBytes), fp);
    } catch (const std::exception&) {
      current = ParsedPlanFile();
    }
    if (current.problem) current = ParsedPlanFile();
  }
  current.mine.merge(book, /*override=*/true);
  write_file_atomically(path, plan_file_text(current.mine, fp, current.others));
}

void write_plan_file(const std::string& path, const PlanBook& book, const PlanFingerprint& fp) {
  write_file_atomically(path, plan_file_text(book, fp));
}

std::optional<std::string> plan_cache_setting_problem(const std::string& value) {
  if (value.empty()) return "must be auto, off or the path of a plan file";
  if (value.back() == '/') return "'" + value + "' names a folder; give a plan file's path (or auto, off)";
  return std::nullopt;
}

PlanCacheLocation resolve_plan_cache(const std::string& value) {
  if (const auto problem = plan_cache_setting_problem(value)) throw InputError("train.plan_cache", *problem);
  if (value == "off") return {};
  if (value != "auto") return {value, false};
  if (const auto xdg = absolute_env("XDG_CACHE_HOME")) return {*xdg + "/dptrain/plans.json", true};
  if (const auto home = absolute_env("HOME")) return {*home + "/.cache/dptrain/plans.json", true};
  return {};
}

}  // namespace dptrain
