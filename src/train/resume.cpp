#include "train/resume.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/config_diff.h"

namespace dptrain {

namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

/// Keys a checkpoint's tensors or layout depend on: they cannot change.
bool is_structural(const std::string& key) { return starts_with(key, "model.") || key == "train.optimizer.type"; }

/// Keys that only say how long, how often or how fast: the continuation stays exact.
bool is_run_only(const std::string& key) {
  for (const char* prefix : {"name", "data.dir", "train.epochs", "train.max_steps", "train.eval_batch_size",
                             "train.log_every", "train.cuda_graph", "train.cudnn_benchmark", "train.check_numerics",
                             "checkpoint.", "comm.", "train.plan_cache", "train.eval_every"}) {
    if (starts_with(key, prefix)) return true;
  }
  return false;
}

/// Whether the schedule's rates depend on the planned run length (epochs x steps per epoch): then
/// train.epochs is not run-only.
bool schedule_spans_the_run(const ScheduleConfig& s) {
  return s.type == "cosine" || s.type == "onecycle" || (s.type == "linear" && s.total_iters == 0);
}

/// Whether SGD keeps a momentum buffer (an optimizer state tensor): momentum != 0, or onecycle
/// cycling it (optim/lr_schedule.h, scheduled_optimizer).
bool sgd_keeps_momentum_buffer(const TrainConfig& t) {
  return t.optimizer.type == "sgd" &&
         (t.optimizer.momentum != 0.0 || (t.schedule.type == "onecycle" && t.schedule.cycle_momentum));
}

}  // namespace

std::optional<std::string> find_resume_checkpoint(const std::string& run_dir, int keep, std::vector<std::string>& warnings) {
  const CheckpointDir::Resolved r = CheckpointDir(run_dir, keep).resolve_auto();
  warnings = r.warnings;
  return r.path;
}

bool holds_a_run(const std::string& run_dir) {
  const CheckpointDir dir(run_dir, 1);
  std::error_code ec;  // an unreadable entry counts as present: never overwrite what cannot be seen
  const auto present = [&](const std::string& path) { return std::filesystem::exists(path, ec) || ec; };
  return present(dir.latest_path()) || !dir.list_steps().empty() || present(dir.best_path()) ||
         present(dir.final_path());
}

std::vector<std::string> check_resume_config(const Config& saved, const Config& now, const std::string& path) {
  std::vector<std::string> structural, notes;
  for (const ConfigChange& c : diff_configs(saved, now)) {
    if (is_structural(c.key)) {
      structural.push_back(describe(c));
    } else if (is_run_only(c.key) && !(c.key == "train.epochs" && schedule_spans_the_run(now.train.schedule))) {
      notes.push_back(describe(c));
    } else {
      notes.push_back(describe(c) + " (changes the training: the continuation differs from the uninterrupted run)");
    }
  }
  if (sgd_keeps_momentum_buffer(saved.train) != sgd_keeps_momentum_buffer(now.train))
    structural.push_back(std::string("SGD's momentum buffer: ") +
                         (sgd_keeps_momentum_buffer(saved.train) ? "kept -> none" : "none -> kept") +
                         " (train.optimizer.momentum 0 or not, or onecycle's cycle_momentum)");
  if (!structural.empty()) {
    // One line, as every input error: the first few differences (another network differs in
    // every layer after the first change).
    constexpr size_t kShown = 6;
    std::string listed;
    for (size_t i = 0; i < std::min(structural.size(), kShown); ++i) listed += (i == 0 ? "" : "; ") + structural[i];
    if (structural.size() > kShown) listed += "; and " + std::to_string(structural.size() - kShown) + " more";
    throw InputError(path, "was written for another model or optimizer; these settings differ: " + listed);
  }
  return notes;
}

}  // namespace dptrain
