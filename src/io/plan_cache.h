// Plan records, the plan book, and the plan cache file: the planner's choices (which implementation
// runs each direction of each convolution, per batch size) kept between runs and shared by ranks.
//
// - A PlanRecord is one choice: an implementation name, cuDNN's algorithm number, a sub-batch size.
//   Its key (plan_key) is a canonical string of everything that decides the choice: the layer's
//   shape, the batch, the direction and every setting that filters candidates. The workspace is
//   not trusted from the file: the planner asks cuDNN for it again (a too-small workspace would be
//   an out-of-bounds write).
// - A PlanBook holds records by key and remembers which were used (looked up or added) in this
//   process: those are the run's plan (plans.json in the run folder, and what rank 0 broadcasts).
// - A plan file is JSON: {"format": "dptrain-plans", "version": 1, "machines": [{"fingerprint":
//   {...}, "plans": {key: record}}, ...]}. Plans are used only from the section whose fingerprint
//   (GPU name, compute capability, SM count, driver, CUDA runtime, cuDNN, cuBLAS, dptrain's build
//   id) equals the running one's. A file that is unreadable, truncated, of another format or
//   version, or without a section for this fingerprint (foreign or stale) gives an empty book and
//   one warning, never an exception; the next merge rewrites a bad file, and adds a section to a
//   good one (the other machines' sections are kept, the 8 most recently written). Records with an
//   unknown implementation or out-of-range numbers are dropped (one warning for them all).
// - Writing merges under an exclusive flock on "<path>.lock" (read, add, write atomically), so two
//   processes writing at once leave a valid file holding both's records.
// Host code only: the CPU-only build compiles it and the unit tests drive it (tests/unit/test_plan_cache.cpp).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace dptrain {

/// Where plans were made; plans are reused only where everything here is equal.
struct PlanFingerprint {
  std::string gpu;         ///< device name, "NVIDIA H200"
  int cc_major = 0, cc_minor = 0;
  int sms = 0;             ///< multiprocessor count
  int driver = 0;          ///< cudaDriverGetVersion
  int runtime = 0;         ///< cudaRuntimeGetVersion
  int cudnn = 0;           ///< cudnnGetVersion
  int cublas = 0;          ///< cublasGetVersion
  std::string build;       ///< dptrain's build id (core/build_id.h)
  bool operator==(const PlanFingerprint&) const = default;
  /// "NVIDIA H200 (sm 9.0, 132 SMs), driver 12040, CUDA 12040, cuDNN 90100, cuBLAS 120400, build 1a2b.."
  std::string describe() const;
};

/// The implementation names a record may hold: ConvExecutor's families (conv_planner.cpp maps them),
/// and for a whole training pass the fused or the layered one (model/fused_train_step.h).
inline const std::vector<std::string>& plan_implementations() {
  static const std::vector<std::string> names{"cudnn", "direct", "tiled", "mma", "small", "fused", "layered"};
  return names;
}

/// One direction's choice.
struct PlanRecord {
  std::string impl;  ///< one of plan_implementations()
  int algo = 0;      ///< cuDNN's algorithm number (impl "cudnn")
  int chunk = 0;     ///< > 0: cuDNN over sub-batches of this many samples
  bool operator==(const PlanRecord&) const = default;
};

/// A record's key: the fields, in the order given, as "name=value" joined by ';'. The planner passes
/// every field that decides its choice; equal keys mean interchangeable choices.
std::string plan_key(const std::vector<std::pair<std::string, std::string>>& fields);

class PlanBook {
 public:
  /// The record for `key`, marked used; or nothing.
  std::optional<PlanRecord> find(const std::string& key);
  /// Adds or replaces a record, marked used.
  void put(const std::string& key, const PlanRecord& record);
  /// Drops a record (found unusable), so it is neither used nor written again.
  void erase(const std::string& key);
  /// Adds other's records; where both hold a key, `other` wins if `override`. Used marks stay.
  void merge(const PlanBook& other, bool override);

  const std::map<std::string, PlanRecord>& records() const { return records_; }
  /// Clears the used marks (a book just read from a file or received).
  void forget_use() { used_.clear(); }
  /// The records looked up or added in this process: the plan this run used.
  PlanBook used() const;
  size_t size() const { return records_.size(); }
  bool empty() const { return records_.empty(); }
  bool operator==(const PlanBook& o) const { return records_ == o.records_; }

  /// A recorded plan (train.plan_cache=PATH): used as it is; a key not in it is planned and warned about.
  bool fixed = false;
  /// Where the book came from, for warnings ("runs/x/plans.json").
  std::string source;

  /// The records alone as compact JSON, and back (a rank's copy of rank 0's book). parse throws
  /// std::runtime_error on bytes that are not such JSON.
  std::string serialize() const;
  static PlanBook parse(const std::string& bytes);

 private:
  std::map<std::string, PlanRecord> records_;
  std::set<std::string> used_;
};

/// The text of a plan file holding `book`'s records made under `fp`.
std::string plan_file_text(const PlanBook& book, const PlanFingerprint& fp);

/// A plan file's records, or an empty book and the reason (one line, naming the path) when the file
/// is missing (no warning: a cold cache), unreadable, corrupt, truncated, of another format or
/// version, or made under another fingerprint. Never throws for the file's contents.
struct PlanFileRead {
  PlanBook book;
  std::optional<std::string> warning;
  bool existed = false;
};
PlanFileRead read_plan_file(const std::string& path, const PlanFingerprint& fp);

/// Adds `book`'s records to the file at `path` (creating its folder), under an exclusive flock on
/// "<path>.lock": the file's current records for `fp` are kept unless `book` holds the same key,
/// other fingerprints' sections are kept as they are (up to 8 sections, this one first), then the
/// whole file is replaced atomically. Throws std::runtime_error on I/O errors.
void merge_into_plan_file(const std::string& path, const PlanBook& book, const PlanFingerprint& fp);

/// Replaces the file at `path` with exactly `book`'s records under `fp`, atomically (a run
/// folder's plans.json: one section).
void write_plan_file(const std::string& path, const PlanBook& book, const PlanFingerprint& fp);

/// train.plan_cache, resolved: where to read plans, and whether to write them back there.
struct PlanCacheLocation {
  std::string path;       ///< empty: no cache (off, or no cache folder can be named)
  bool writable = false;  ///< auto: the shared cache; an explicit PATH is a recorded plan, read only
};
/// What is wrong with a train.plan_cache value ("auto", "off", or a file path), or nothing.
std::optional<std::string> plan_cache_setting_problem(const std::string& value);
/// auto: $XDG_CACHE_HOME/dptrain/plans.json, else $HOME/.cache/dptrain/plans.json (relative or
/// empty variables are ignored, as the XDG specification says); off: none; anything else: that path, read only.
PlanCacheLocation resolve_plan_cache(const std::string& value);

}  // namespace dptrain
