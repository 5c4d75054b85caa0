#include "train/startup_timer.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace dptrain {

namespace {

// The origin, as a steady_clock count, set once by main (0: never set).
std::atomic<StartupTimer::Clock::rep> g_main_entered{0};
// How long the process had run when main was entered (negative: unknown).
std::atomic<double> g_before_main{-1.0};

}  // namespace

std::optional<double> seconds_since_process_start() {
  // /proc/self/stat: "pid (comm) state ..." with field 22 the start time in clock ticks since
  // boot. comm may hold spaces and parentheses: count fields after the last ')'.
  std::ifstream in("/proc/self/stat");
  std::string stat;
  if (!std::getline(in, stat)) return std::nullopt;
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(stat.substr(close + 1));
  std::string field;
  unsigned long long start_ticks = 0;
  for (int i = 3; i <= 22 && fields >> field; ++i)  // field 3 is the state, just after ')'
    if (i == 22) start_ticks = std::strtoull(field.c_str(), nullptr, 10);
  const long hz = sysconf(_SC_CLK_TCK);
  timespec now{};
  if (start_ticks == 0 || hz <= 0 || clock_gettime(CLOCK_BOOTTIME, &now) != 0) return std::nullopt;
  const double since = static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec) -
                       static_cast<double>(start_ticks) / static_cast<double>(hz);
  return since >= 0 ? std::optional<double>(since) : std::nullopt;
}

void note_main_entered() {
  StartupTimer::Clock::rep expected = 0;
  if (!g_main_entered.compare_exchange_strong(expected, StartupTimer::Clock::now().time_since_epoch().count())) return;
  const std::optional<double> before = seconds_since_process_start();
  g_before_main = before ? *before : -1.0;
}

namespace {

StartupTimer::Clock::time_point main_origin() {
  const StartupTimer::Clock::rep at = g_main_entered.load();
  if (at == 0) return StartupTimer::Clock::now();
  return StartupTimer::Clock::time_point(StartupTimer::Clock::duration(at));
}

std::optional<double> before_main() {
  if (g_main_entered.load() == 0) return std::nullopt;
  const double s = g_before_main.load();
  return s >= 0 ? std::optional<double>(s) : std::nullopt;
}

}  // namespace

StartupTimer::StartupTimer() : StartupTimer(main_origin(), before_main()) {}

StartupTimer::StartupTimer(Clock::time_point origin, std::optional<double> before_main)
    : origin_(origin), last_(origin), before_main_(before_main) {
  if (before_main_) phases_.push_back({"process_start", *before_main_});
}

void StartupTimer::mark(const std::string& name) {
  if (finished_) return;
  const Clock::time_point now = Clock::now();
  phases_.push_back({name, std::chrono::duration<double>(now - last_).count()});
  last_ = now;
}

void StartupTimer::mark_parts(const std::vector<std::pair<std::string, double>>& leading, const std::string& rest) {
  if (finished_) return;
  const Clock::time_point now = Clock::now();
  double left = std::chrono::duration<double>(now - last_).count();
  for (const auto& [name, seconds] : leading) {
    const double s = std::max(0.0, std::min(seconds, left));
    phases_.push_back({name, s});
    left -= s;
  }
  phases_.push_back({rest, left});
  last_ = now;
}

void StartupTimer::add_overlapped(const std::string& name, double seconds) {
  if (!finished_) overlapped_.push_back({name, seconds});
}

void StartupTimer::add_plan(const std::string& layer, int batch, const std::string& direction, double seconds) {
  if (!finished_) plans_.push_back({layer, batch, direction, seconds});
}

double StartupTimer::total() const {
  return std::chrono::duration<double>(last_ - origin_).count() + before_main_.value_or(0.0);
}

nlohmann::json StartupTimer::to_json() const {
  nlohmann::json j;
  j["total_s"] = total();
  j["from"] = from_exec() ? "exec" : "main";
  j["phases"] = nlohmann::json::object();
  j["order"] = nlohmann::json::array();
  // A phase met twice (none today) adds up under its name.
  for (const Phase& p : phases_) {
    if (!j["phases"].contains(p.name)) j["order"].push_back(p.name), j["phases"][p.name] = 0.0;
    j["phases"][p.name] = j["phases"][p.name].get<double>() + p.seconds;
  }
  for (const Phase& p : overlapped_) j["overlapped"][p.name] = p.seconds;
  for (const Plan& p : plans_)
    j["plans"].push_back({{"layer", p.layer}, {"batch", p.batch}, {"direction", p.direction}, {"s", p.seconds}});
  return j;
}

std::string StartupTimer::table(const std::string& title) const {
  const double total_s = total();
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "%s: %.3f s from %s; ms, share of the total\n", title.c_str(), total_s,
                from_exec() ? "process start" : "main (process start unknown)");
  out += line;
  std::snprintf(line, sizeof line, "%-28s %10s %7s\n", "phase", "ms", "share");
  out += line;
  for (const Phase& p : phases_) {
    std::snprintf(line, sizeof line, "%-28s %10.1f %6.1f%%\n", p.name.c_str(), 1000.0 * p.seconds,
                  total_s > 0 ? 100.0 * p.seconds / total_s : 0.0);
    out += line;
  }
  for (const Phase& p : overlapped_) {
    std::snprintf(line, sizeof line, "%-28s %10.1f   (on another thread, beside the phases above)\n",
                  p.name.c_str(), 1000.0 * p.seconds);
    out += line;
  }
  if (!plans_.empty()) {
    std::snprintf(line, sizeof line, "%-28s %6s %-10s %10s\n", "planning: layer", "batch", "direction", "ms");
    out += line;
    for (const Plan& p : plans_) {
      std::snprintf(line, sizeof line, "%-28s %6d %-10s %10.1f\n", p.layer.c_str(), p.batch, p.direction.c_str(),
                    1000.0 * p.seconds);
      out += line;
    }
  }
  return out;
}

}  // namespace dptrain
