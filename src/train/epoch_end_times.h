// EpochEndTimes: what the work between epochs costs the training thread (rank 0): the evaluation,
// the metrics line, and each checkpoint's snapshot (the host copy it waits for) and hand-over to
// the background writer (train/checkpoint_writer.h), whose own write time is reported beside it.
// --profile prints it as a table after the step profile and writes it into profile.json.
#pragma once

#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "train/checkpoint_writer.h"

namespace dptrain {

struct EpochEndTimes {
  double eval_s = 0;
  int evals = 0;
  double metrics_s = 0;
  int metrics_lines = 0;
  double snapshot_s = 0;  ///< training thread: sync, host copy, finiteness check, hand-over
  int checkpoints = 0;

  nlohmann::json to_json(const CheckpointWriter& writer) const {
    return {{"evaluation_s", eval_s},
            {"evaluations", evals},
            {"metrics_line_s", metrics_s},
            {"metrics_lines", metrics_lines},
            {"checkpoint_snapshot_s", snapshot_s},
            {"checkpoints", checkpoints},
            {"checkpoint_write_s", writer.write_seconds()},
            {"checkpoint_wait_s", writer.wait_seconds()},
            {"checkpoint_writes_async", writer.asynchronous()}};
  }

  std::string table(const CheckpointWriter& writer) const {
    std::string out = "epoch ends (rank 0), ms: total, count, mean\n";
    char line[200];
    const auto row = [&](const char* name, double s, int n, const char* note) {
      std::snprintf(line, sizeof line, "%-22s %10.1f %5d %9.1f   %s\n", name, 1000.0 * s, n, n > 0 ? 1000.0 * s / n : 0.0,
                    note);
      out += line;
    };
    row("evaluation", eval_s, evals, "the test set, on the training thread");
    row("metrics line", metrics_s, metrics_lines, "metrics.jsonl and the epoch line");
    row("checkpoint snapshot", snapshot_s, checkpoints, "training thread: device sync, host copy, checks");
    row("checkpoint write", writer.write_seconds(), static_cast<int>(writer.writes_done()),
        writer.asynchronous() ? "writer thread: serialise, SHA-256, write, fsync, rename, rotate"
                              : "on the training thread (--sync-checkpoints)");
    row("checkpoint wait", writer.wait_seconds(), 0, "training thread waiting for the writer (full queue, the end)");
    return out;
  }
};

}  // namespace dptrain
