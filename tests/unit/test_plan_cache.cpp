// The plan cache (io/plan_cache.h) and rank 0's planning with it (train/plan_sharing.h), driven on
// the CPU with a fake planner: hit, miss, corrupt, truncated, stale version, foreign GPU, unknown
// implementation, two processes writing at once, `off`, `auto`'s location, a read-only PATH that is
// never modified, the run folder's plans.json, resume, and train.plan_cache's validation.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "core/build_id.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "io/config.h"
#include "io/plan_cache.h"
#include "train/plan_sharing.h"
#include "train/resume.h"

namespace dptrain {
namespace {

namespace fs = std::filesystem;

PlanFingerprint h200() {
  return {"NVIDIA H200", 9, 0, 132, 12040, 12040, 90100, 120400, "abc-0123456789abcdef"};
}

const std::string kConv1 = plan_key({{"op", "conv2d"}, {"n", "64"}, {"direction", "forward"}});
const std::string kConv2 = plan_key({{"op", "conv2d"}, {"n", "64"}, {"direction", "backward-filter"}});

/// Scoped environment variable (restored at scope end).
class EnvVar {
 public:
  EnvVar(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = std::string(old);
    if (value)
      ::setenv(name, value, 1);
    else
      ::unsetenv(name);
  }
  ~EnvVar() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

class PlanCache : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dptrain-plans-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  /// A cache file holding conv1 -> cuDNN 1 and conv2 -> tiled.
  std::string cached_file() const {
    PlanBook b;
    b.put(kConv1, {"cudnn", 1, 0});
    b.put(kConv2, {"tiled", 0, 0});
    const std::string p = path("plans.json");
    write_plan_file(p, b, h200());
    return p;
  }
  static void write(const std::string& p, const std::string& text) { std::ofstream(p) << text; }

  fs::path dir_;
};

TEST_F(PlanCache, HitReturnsTheRecordedChoices) {
  const PlanFileRead r = read_plan_file(cached_file(), h200());
  EXPECT_FALSE(r.warning) << *r.warning;
  EXPECT_TRUE(r.existed);
  PlanBook book = r.book;
  EXPECT_TRUE(book.used().empty());  // read is not used
  EXPECT_EQ(book.find(kConv1), (PlanRecord{"cudnn", 1, 0}));
  EXPECT_EQ(book.find(kConv2), (PlanRecord{"tiled", 0, 0}));
  EXPECT_EQ(book.used().size(), 2u);
}

TEST_F(PlanCache, MissingFileIsAColdCacheWithoutWarning) {
  const PlanFileRead r = read_plan_file(path("none.json"), h200());
  EXPECT_FALSE(r.warning);
  EXPECT_FALSE(r.existed);
  EXPECT_TRUE(r.book.empty());
  PlanBook book = r.book;
  EXPECT_FALSE(book.find(kConv1));
  EXPECT_TRUE(book.used().empty());  // a miss is not used
}

TEST_F(PlanCache, CorruptFileWarnsOnceAndIsRebuilt) {
  const std::string p = path("plans.json");
  write(p, "\x01\x02 not json at all");
  const PlanFileRead r = read_plan_file(p, h200());
  ASSERT_TRUE(r.warning);
  EXPECT_NE(r.warning->find(p), std::string::npos) << *r.warning;
  EXPECT_NE(r.warning->find("corrupt"), std::string::npos) << *r.warning;
  EXPECT_EQ(r.warning->find('\n'), std::string::npos) << "one line";
  EXPECT_TRUE(r.book.empty());
  PlanBook fresh;
  fresh.put(kConv1, {"mma", 0, 0});
  merge_into_plan_file(p, fresh, h200());  // rebuilt: the next read is clean
  const PlanFileRead again = read_plan_file(p, h200());
  EXPECT_FALSE(again.warning);
  EXPECT_EQ(again.book.records().size(), 1u);
}

TEST_F(PlanCache, TruncatedFileWarns) {
  const std::string p = cached_file();
  const std::string text = read_whole_file(p);
  for (size_t keep : {size_t{0}, size_t{1}, text.size() / 2, text.size() - 3}) {
    write(p, text.substr(0, keep));
    const PlanFileRead r = read_plan_file(p, h200());
    ASSERT_TRUE(r.warning) << keep;
    EXPECT_TRUE(r.book.empty()) << keep;
  }
}

TEST_F(PlanCache, StaleVersionWarns) {
  const std::string p = cached_file();
  std::string text = read_whole_file(p);
  const size_t at = text.find("\"version\": 1");
  ASSERT_NE(at, std::string::npos) << text;
  text.replace(at, 12, "\"version\": 0");
  write(p, text);
  const PlanFileRead r = read_plan_file(p, h200());
  ASSERT_TRUE(r.warning);
  EXPECT_NE(r.warning->find("version"), std::string::npos) << *r.warning;
  EXPECT_TRUE(r.book.empty());
}

TEST_F(PlanCache, ForeignGpuDriverLibraryOrBuildWarns) {
  const std::string p = cached_file();
  std::vector<PlanFingerprint> others(6, h200());
  others[0].gpu = "NVIDIA A100-SXM4-80GB";
  others[1].sms = 114;
  others[2].driver = 12050;
  others[3].cudnn = 90200;
  others[4].cublas = 120500;
  others[5].build = "abc-fedcba9876543210";  // a kernel changed
  for (const PlanFingerprint& other : others) {
    const PlanFileRead r = read_plan_file(p, other);
    ASSERT_TRUE(r.warning) << other.describe();
    EXPECT_NE(r.warning->find("holds no plans for this run's"), std::string::npos) << *r.warning;
    EXPECT_NE(r.warning->find("only for NVIDIA H200"), std::string::npos) << *r.warning;
    EXPECT_TRUE(r.book.empty());
  }
}

// One cache file serves several machines or builds: a merge from another fingerprint adds a
// section and keeps the others', so alternating between two GPUs or two builds re-plans nothing.
TEST_F(PlanCache, SectionsOfOtherMachinesAreKept) {
  const std::string p = cached_file();
  PlanFingerprint a100 = h200();
  a100.gpu = "NVIDIA A100";
  PlanBook theirs;
  theirs.put(kConv1, {"cudnn", 0, 0});
  merge_into_plan_file(p, theirs, a100);
  const PlanFileRead mine = read_plan_file(p, h200());
  ASSERT_FALSE(mine.warning) << *mine.warning;
  EXPECT_EQ(mine.book.records().size(), 2u);
  EXPECT_EQ(mine.book.records().at(kConv1), (PlanRecord{"cudnn", 1, 0}));
  const PlanFileRead other = read_plan_file(p, a100);
  ASSERT_FALSE(other.warning) << *other.warning;
  EXPECT_EQ(other.book.records().at(kConv1), (PlanRecord{"cudnn", 0, 0}));
  // At most 8 sections: the oldest go.
  for (int build = 0; build < 10; ++build) {
    PlanFingerprint f = h200();
    f.build = "build-" + std::to_string(build);
    merge_into_plan_file(p, theirs, f);
  }
  EXPECT_TRUE(read_plan_file(p, h200()).warning);  // written 11 merges ago: dropped
  PlanFingerprint last = h200();
  last.build = "build-9";
  EXPECT_FALSE(read_plan_file(p, last).warning);
}

// nlohmann copies deep nesting recursively: a 200,000-deep array inside another machine's section
// (which is copied whole to be kept) overflowed the stack. It is a corrupt file: one warning.
TEST_F(PlanCache, DeeplyNestedJsonIsACorruptFileNotACrash) {
  const std::string p = cached_file();
  PlanFingerprint a100 = h200();
  a100.gpu = "NVIDIA A100";
  merge_into_plan_file(p, PlanBook(), a100);
  std::string text = read_whole_file(p);
  const size_t gpu = text.find("\"NVIDIA A100\"");
  ASSERT_NE(gpu, std::string::npos);
  const size_t at = text.rfind("\"gpu\"", gpu);  // the key, inside the A100 section's fingerprint
  ASSERT_NE(at, std::string::npos);
  text.insert(at, "\"deep\": " + std::string(200000, '[') + std::string(200000, ']') + ", ");
  write(p, text);
  const PlanFileRead r = read_plan_file(p, h200());
  ASSERT_TRUE(r.warning);
  EXPECT_NE(r.warning->find("nested deeper than 32 levels"), std::string::npos) << *r.warning;
  EXPECT_TRUE(r.book.empty());
}

// Numbers that do not fit an int: a float where an integer belongs (found by fuzz_plan_cache: the
// conversion was undefined behaviour) and an integer that wrapped (2^32 + 3 read as algorithm 3).
TEST_F(PlanCache, NumbersThatDoNotFitAnIntAreCorruptOrDropped) {
  const std::string p = cached_file();
  std::string text = read_whole_file(p);
  const size_t at = text.find("\"tiled\"");
  ASSERT_NE(at, std::string::npos);
  const size_t algo = text.rfind("\"algo\": 0", at);  // keys are sorted: algo, chunk, impl
  ASSERT_NE(algo, std::string::npos) << text;
  text.replace(algo, std::string("\"algo\": 0").size(), "\"algo\": 4294967299");
  write(p, text);
  PlanFileRead r = read_plan_file(p, h200());
  ASSERT_TRUE(r.warning);
  EXPECT_EQ(r.book.records().size(), 1u);  // the wrapped record is dropped, the other stays
  EXPECT_TRUE(r.book.records().contains(kConv1));
  text = read_whole_file(p);
  const size_t runtime = text.find("\"cuda_runtime\": ");
  ASSERT_NE(runtime, std::string::npos) << text;
  text.insert(runtime + 16, "1300000000000074407370");  // a float for nlohmann, before the real digits
  write(p, text);
  r = read_plan_file(p, h200());
  ASSERT_TRUE(r.warning);
  EXPECT_NE(r.warning->find("\"cuda_runtime\" is not an integer that fits an int"), std::string::npos) << *r.warning;
  EXPECT_TRUE(r.book.empty());
}

TEST_F(PlanCache, UnknownImplementationIsDroppedNotACrash) {
  const std::string p = cached_file();
  std::string text = read_whole_file(p);
  const size_t at = text.find("\"tiled\"");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 7, "\"winograd9\"");
  write(p, text);
  const PlanFileRead r = read_plan_file(p, h200());
  ASSERT_TRUE(r.warning);
  EXPECT_NE(r.warning->find("unknown implementation"), std::string::npos) << *r.warning;
  EXPECT_EQ(r.book.records().size(), 1u);  // the valid record stays
  EXPECT_TRUE(r.book.records().contains(kConv1));
}

TEST_F(PlanCache, OtherFormatsAndBadFieldsWarn) {
  const std::string p = path("plans.json");
  for (const char* text : {"[]", "{\"format\": \"other\"}", "{\"format\": \"dptrain-plans\", \"version\": 1}",
                           "{\"format\": \"dptrain-plans\", \"version\": \"1\"}"}) {
    write(p, text);
    const PlanFileRead r = read_plan_file(p, h200());
    EXPECT_TRUE(r.warning) << text;
    EXPECT_TRUE(r.book.empty()) << text;
  }
}

TEST_F(PlanCache, MergeKeepsOtherWritersRecords) {
  const std::string p = cached_file();
  PlanBook mine;
  mine.put(kConv1, {"cudnn", 7, 0});
  mine.put("new", {"direct", 0, 0});
  merge_into_plan_file(p, mine, h200());
  const PlanFileRead r = read_plan_file(p, h200());
  ASSERT_FALSE(r.warning);
  EXPECT_EQ(r.book.records().size(), 3u);
  EXPECT_EQ(r.book.records().at(kConv1), (PlanRecord{"cudnn", 7, 0}));  // the newer choice
  EXPECT_EQ(r.book.records().at(kConv2), (PlanRecord{"tiled", 0, 0}));  // kept
}

// Two processes, each merging its own records one at a time, at once: the file stays valid after
// every write and in the end holds every record of both (the flock serialises read-merge-write).
TEST_F(PlanCache, TwoConcurrentWritersLeaveAValidFileWithBoth) {
  const std::string p = path("shared/plans.json");
  constexpr int kRecords = 40;
  std::vector<pid_t> children;
  for (int writer = 0; writer < 2; ++writer) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int status = 0;
      try {
        for (int i = 0; i < kRecords; ++i) {
          PlanBook b;
          b.put("writer=" + std::to_string(writer) + ";i=" + std::to_string(i), {"cudnn", i % 8, 0});
          merge_into_plan_file(p, b, h200());
          if (read_plan_file(p, h200()).warning) status = 3;  // a reader never sees a torn file
        }
      } catch (...) {
        status = 2;
      }
      ::_exit(status);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  }
  const PlanFileRead r = read_plan_file(p, h200());
  ASSERT_FALSE(r.warning) << *r.warning;
  EXPECT_EQ(r.book.records().size(), 2u * kRecords);
  for (const auto& entry : fs::directory_iterator(dir_ / "shared"))  // no temp files left behind
    EXPECT_TRUE(entry.path().filename() == "plans.json" || entry.path().filename() == "plans.json.lock")
        << entry.path();
}

TEST_F(PlanCache, SerializedBookRoundTrips) {
  PlanBook b;
  b.put(kConv1, {"cudnn", 1, 32});
  b.put(kConv2, {"mma", 0, 0});
  const PlanBook back = PlanBook::parse(b.serialize());
  EXPECT_EQ(back, b);
  EXPECT_TRUE(back.used().empty());
  EXPECT_THROW(PlanBook::parse("{\"k\": {\"impl\": \"nope\", \"algo\": 0, \"chunk\": 0}}"), std::runtime_error);
  EXPECT_THROW(PlanBook::parse("{"), std::runtime_error);
}

TEST_F(PlanCache, LocationAutoOffAndPath) {
  {
    EnvVar xdg("XDG_CACHE_HOME", "/tmp/xdg");
    const PlanCacheLocation a = resolve_plan_cache("auto");
    EXPECT_EQ(a.path, "/tmp/xdg/dptrain/plans.json");
    EXPECT_TRUE(a.writable);
  }
  {
    EnvVar xdg("XDG_CACHE_HOME", "relative/ignored");  // the XDG rule: only absolute paths count
    EnvVar home("HOME", "/home/u");
    EXPECT_EQ(resolve_plan_cache("auto").path, "/home/u/.cache/dptrain/plans.json");
  }
  {
    EnvVar xdg("XDG_CACHE_HOME", nullptr);
    EnvVar home("HOME", nullptr);
    EXPECT_TRUE(resolve_plan_cache("auto").path.empty());  // nowhere to keep it: no cache
  }
  EXPECT_TRUE(resolve_plan_cache("off").path.empty());
  const PlanCacheLocation fixed = resolve_plan_cache("runs/x/plans.json");
  EXPECT_EQ(fixed.path, "runs/x/plans.json");
  EXPECT_FALSE(fixed.writable);
  EXPECT_THROW(resolve_plan_cache(""), InputError);
}

/// A fake planner: looks each key up and, on a miss, "measures" and records `answer`.
struct FakePlanner {
  std::vector<std::string> keys{kConv1, kConv2};
  PlanRecord answer{"cudnn", 5, 0};
  int measured = 0;
  void operator()(PlanBook& book) {
    for (const std::string& k : keys)
      if (!book.find(k)) {
        ++measured;
        book.put(k, answer);
      }
  }
};

TEST_F(PlanCache, AutoCacheIsWrittenThenHitWithoutMeasuring) {
  EnvVar xdg("XDG_CACHE_HOME", dir_.c_str());
  const PlanningOptions options{"auto", path("run1"), false};
  std::vector<std::string> warnings;
  const auto warn = [&](const std::string& w) { warnings.push_back(w); };
  FakePlanner cold;
  PlanBook book;
  plan_with_cache(options, h200(), warn, std::ref(cold), book);
  EXPECT_EQ(cold.measured, 2);
  ASSERT_TRUE(fs::exists(path("dptrain/plans.json")));
  ASSERT_TRUE(fs::exists(path("run1/plans.json")));  // the run's own plan
  EXPECT_EQ(read_plan_file(path("run1/plans.json"), h200()).book.records().size(), 2u);

  FakePlanner warm;
  warm.answer = {"cudnn", 6, 0};  // would choose differently if it measured
  PlanBook again;
  plan_with_cache({"auto", path("run2"), false}, h200(), warn, std::ref(warm), again);
  EXPECT_EQ(warm.measured, 0);
  EXPECT_EQ(again.used().records().at(kConv1), (PlanRecord{"cudnn", 5, 0}));
  EXPECT_TRUE(warnings.empty());
  // On another GPU the cache is foreign: one warning, planned afresh, and the cache rewritten for it.
  PlanFingerprint a100 = h200();
  a100.gpu = "NVIDIA A100";
  FakePlanner foreign;
  PlanBook other;
  plan_with_cache({"auto", path("run3"), false}, a100, warn, std::ref(foreign), other);
  EXPECT_EQ(foreign.measured, 2);
  EXPECT_EQ(warnings.size(), 1u);
  EXPECT_FALSE(read_plan_file(path("dptrain/plans.json"), a100).warning);
  EXPECT_EQ(read_plan_file(path("dptrain/plans.json"), h200()).book.records().size(), 2u);  // kept
}

TEST_F(PlanCache, OffReadsAndWritesNoCache) {
  EnvVar xdg("XDG_CACHE_HOME", dir_.c_str());
  FakePlanner planner;
  PlanBook book;
  plan_with_cache({"off", path("run"), false}, h200(), [](const std::string&) {}, std::ref(planner), book);
  EXPECT_EQ(planner.measured, 2);
  EXPECT_FALSE(fs::exists(path("dptrain")));
  EXPECT_TRUE(fs::exists(path("run/plans.json")));  // the run still records what it used
}

// A recorded plan given as PATH is used as it is and never written: bytes and mtime unchanged,
// also when a key is missing there (planned here, with a warning naming the file).
TEST_F(PlanCache, ReadOnlyPathIsUsedAndNeverModified) {
  EnvVar xdg("XDG_CACHE_HOME", dir_.c_str());
  PlanBook recorded;
  recorded.put(kConv1, {"cudnn", 1, 0});
  const std::string p = path("runs/x/plans.json");
  fs::create_directories(path("runs/x"));
  write_plan_file(p, recorded, h200());
  const std::string bytes = read_whole_file(p);
  struct stat before {};
  ASSERT_EQ(::stat(p.c_str(), &before), 0);
  std::vector<std::string> warnings;
  FakePlanner planner;
  PlanBook book;
  for (const std::string& run_dir : {path("runs/y"), path("runs/x")}) {  // also onto its own run folder
    plan_with_cache({p, run_dir, false}, h200(), [&](const std::string& w) { warnings.push_back(w); },
                    std::ref(planner), book);
  }
  EXPECT_EQ(planner.measured, 2);  // conv2 only, once per run
  EXPECT_EQ(book.used().records().at(kConv1), (PlanRecord{"cudnn", 1, 0}));
  ASSERT_EQ(warnings.size(), 0u);  // the planners warn about misses (book.fixed), not the file
  EXPECT_TRUE(book.fixed);
  EXPECT_EQ(read_whole_file(p), bytes);
  struct stat after {};
  ASSERT_EQ(::stat(p.c_str(), &after), 0);
  EXPECT_EQ(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
  EXPECT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
  EXPECT_EQ(after.st_ino, before.st_ino);  // not replaced by a rename either
  EXPECT_FALSE(fs::exists(path("dptrain")));  // nor is the shared cache touched
  EXPECT_TRUE(fs::exists(path("runs/y/plans.json")));
  EXPECT_THROW(plan_with_cache({path("missing.json"), "", false}, h200(), [](const std::string&) {},
                               std::ref(planner), book),
               InputError);
}

// Resuming with `auto`: the run folder's plans.json wins over the shared cache, which another run
// may have changed since, so the continuation runs exactly what the interrupted run ran.
TEST_F(PlanCache, ResumePrefersTheRunsOwnPlan) {
  EnvVar xdg("XDG_CACHE_HOME", dir_.c_str());
  PlanBook shared, own;
  shared.put(kConv1, {"cudnn", 6, 0});
  shared.put(kConv2, {"cudnn", 6, 0});
  own.put(kConv1, {"cudnn", 1, 0});
  fs::create_directories(path("dptrain"));
  write_plan_file(path("dptrain/plans.json"), shared, h200());
  fs::create_directories(path("run"));
  write_plan_file(path("run/plans.json"), own, h200());
  FakePlanner planner;
  PlanBook book;
  plan_with_cache({"auto", path("run"), true}, h200(), [](const std::string&) {}, std::ref(planner), book);
  EXPECT_EQ(planner.measured, 0);
  EXPECT_EQ(book.used().records().at(kConv1), (PlanRecord{"cudnn", 1, 0}));
  EXPECT_EQ(book.used().records().at(kConv2), (PlanRecord{"cudnn", 6, 0}));
  EXPECT_EQ(read_plan_file(path("run/plans.json"), h200()).book, book.used());
}

// The build id that fingerprints plans: 16 hex digits of a hash of the sources (cmake/build_id.cmake).
TEST(PlanCacheBuildId, IsASourceHash) {
  const std::string id = build_id();
  ASSERT_EQ(id.size(), 16u) << id;
  EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos) << id;
}

TEST(PlanCacheConfig, ValidatesTrainPlanCache) {
  const char* yaml = "model:\n  layers:\n    - {name: fc, type: linear, out_features: 10}\n";
  EXPECT_EQ(parse_config(yaml, "t.yaml").train.plan_cache, "auto");
  EXPECT_EQ(parse_config(yaml, "t.yaml", {"train.plan_cache=off"}).train.plan_cache, "off");
  EXPECT_EQ(parse_config(yaml, "t.yaml", {"train.plan_cache=runs/x/plans.json"}).train.plan_cache,
            "runs/x/plans.json");
  for (const char* bad : {"train.plan_cache=runs/x/", "train.plan_cache=''"}) {
    try {
      parse_config(yaml, "t.yaml", {bad});
      ADD_FAILURE() << bad << " accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("train.plan_cache"), std::string::npos) << e.what();
    }
  }
  // The resolved config names it, and a resume may change it (how fast, not what is computed).
  const Config a = parse_config(yaml, "t.yaml");
  const Config b = parse_config(yaml, "t.yaml", {"train.plan_cache=off"});
  EXPECT_NE(to_yaml(a).find("plan_cache: auto"), std::string::npos);
  const std::vector<std::string> notes = check_resume_config(a, b, "ckpt");
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_EQ(notes[0].find("changes the training"), std::string::npos) << notes[0];
}

}  // namespace
}  // namespace dptrain
