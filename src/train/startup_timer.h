// StartupTimer: where a process's time goes before its first training step (or, for eval and
// predict, before its first result), as consecutive phases: process start until main, MPI init,
// the CUDA context, the cuDNN/cuBLAS handles, the communicator, the data, the model, planning
// (with an entry per layer, batch size and direction), graph capture, the first step.
//
// The clock: phases are measured with steady_clock from the top of main (main.cpp calls
// note_main_entered() first thing). The span before main (exec, the dynamic loader mapping the
// CUDA libraries, static initialisers, and the OpenBLAS re-exec in main.cpp) cannot be seen from
// inside main with steady_clock, so it is read from the kernel's record of when the process started
// (/proc/self/stat field 22, clock ticks since boot, compared with CLOCK_BOOTTIME): 10 ms
// resolution, and absent where /proc cannot be read. It starts at fork, which for a shell or
// mpirun is a few microseconds before exec.
//
// Invariants:
//  - Sequential phases (mark) tile the time from main (or process start) to the last mark: each
//    covers from the previous mark to now, so they sum to total() exactly, and a phase that does
//    not happen on this backend is absent (never a zero).
//  - Work done on another thread beside them (the data read while CUDA initialises) is recorded
//    as "overlapped": it is not part of the sum; the main thread's wait for it is a phase.
//  - Planning entries are details of the "planning" phase and sum to at most it.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace dptrain {

/// Called first thing in main: the steady_clock origin of every StartupTimer in this process.
void note_main_entered();

/// Seconds from the process's start (the kernel's record) to now; nullopt if not readable.
std::optional<double> seconds_since_process_start();

class StartupTimer {
 public:
  using Clock = std::chrono::steady_clock;

  /// Measures from main (note_main_entered; now, if it was never called) and, where the kernel
  /// says when the process started, adds the time before main as the first phase.
  StartupTimer();
  /// For tests: phases from `origin`, with `before_main` seconds before it (nullopt: unknown).
  StartupTimer(Clock::time_point origin, std::optional<double> before_main);

  /// Ends phase `name` now: it covers from the previous mark (or the origin) to now. Marks after
  /// finish() are ignored, so code paths shared with later work need not know.
  void mark(const std::string& name);
  /// Ends several phases now, for a span measured inside in parts (the CUDA context and then its
  /// handles): `leading` phases with the seconds given (clipped to the span), then `rest` with
  /// what is left of the span, so the sum still tiles the time exactly.
  void mark_parts(const std::vector<std::pair<std::string, double>>& leading, const std::string& rest);
  /// Records `seconds` of work done on another thread beside the phases (not in the sum).
  void add_overlapped(const std::string& name, double seconds);
  /// Records that planning layer `layer` for batch `batch` in `direction` ("forward",
  /// "backward") took `seconds` (a detail of the "planning" phase).
  void add_plan(const std::string& layer, int batch, const std::string& direction, double seconds);
  /// No more phases: the breakdown is complete (the first step ran).
  void finish() { finished_ = true; }
  bool finished() const { return finished_; }

  /// Seconds from process start (or main, if unknown) to the last mark.
  double total() const;
  /// Whether the total starts at exec (the kernel's record was read) or only at main.
  bool from_exec() const { return before_main_.has_value(); }

  /// {"total_s", "from": "exec"|"main", "phases": {name: s}, "order": [names], "overlapped":
  /// {name: s}, "plans": [{"layer", "batch", "direction", "s"}]}; the key of a phase that did not
  /// happen is absent, and so are "overlapped" and "plans" when they would be empty.
  nlohmann::json to_json() const;
  /// The table --profile prints: one row per phase in order with its share of the total, the
  /// overlapped work, then the planning entries.
  std::string table(const std::string& title) const;

  struct Phase {
    std::string name;
    double seconds = 0;
  };
  const std::vector<Phase>& phases() const { return phases_; }

 private:
  struct Plan {
    std::string layer;
    int batch;
    std::string direction;
    double seconds;
  };
  Clock::time_point origin_;
  Clock::time_point last_;
  std::optional<double> before_main_;
  std::vector<Phase> phases_;
  std::vector<Phase> overlapped_;
  std::vector<Plan> plans_;
  bool finished_ = false;
};

/// Seconds since `since` on the StartupTimer clock.
inline double seconds_since(StartupTimer::Clock::time_point since) {
  return std::chrono::duration<double>(StartupTimer::Clock::now() - since).count();
}

}  // namespace dptrain
