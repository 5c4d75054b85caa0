// Training curves: a run folder's metrics.jsonl read back as per-epoch points, and drawn with
// PLplot (its pngcairo device) into a PNG: train and test loss, test accuracy and images/s against
// epoch, one colour per run, so that runs can be compared (`dptrain plot`, and curves.png that
// every training run keeps in its folder).
//
// PLplot is optional (cmake/plotting.cmake defines DPTRAIN_HAVE_PLOT where it is found). Without
// it, or without its pngcairo driver at run time, plot_unavailable_reason() says why and
// draw_curves() throws PlotUnavailable; nothing else changes. PLplot's own failure paths prompt on
// stdin or exit() the process, so everything it could refuse (the device, the output file, the
// data) is checked here before it is called.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace dptrain {

/// One line of metrics.jsonl, as far as the curves need it.
struct EpochPoint {
  int epoch = 0;               ///< counted from 1
  double x = 0;                ///< position on the epoch axis: `epoch`, or less for a partial epoch
  double train_loss = 0;
  double test_loss = 0;
  double test_accuracy = 0;    ///< fraction, 0..1
  bool tested = true;          ///< false: no test pass that epoch (train.eval_every), test_* unset
  double images_per_second = 0;
};

/// One run's points in order, and the name its legend entry shows.
struct RunCurves {
  std::string label;
  std::vector<EpochPoint> points;
};

/// Reads `path`: a run folder (its metrics.jsonl) or a metrics.jsonl file. A missing file, a line
/// that is not a JSON object or lacks a field is an InputError naming the file and line. A line
/// superseded by a later one of the same epoch (a partial epoch that a resumed run completed) is
/// dropped. The label is the folder's name.
RunCurves read_run_curves(const std::string& path);

/// Thrown by draw_curves when this build or machine cannot draw (see plot_unavailable_reason).
class PlotUnavailable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Why curves cannot be drawn here ("built without PLplot (...)"), or nothing when they can.
std::optional<std::string> plot_unavailable_reason();

/// Draws `runs` into the PNG `png_path` (width x height pixels), written to a temporary file and
/// renamed, so the file is never seen half-written. Runs with no points are left out; none with
/// points is an InputError. Throws PlotUnavailable when plotting is not possible here.
void draw_curves(const std::vector<RunCurves>& runs, const std::string& png_path, int width = 1200, int height = 800);

/// Keeps a run folder's curves.png current during training (rank 0): redrawn after an epoch when
/// the last drawing took under 2% of the epoch's time (at first 50 ms is assumed: CPU epochs take
/// minutes, a GPU epoch a fraction of a second), and always at the end. A failure never stops
/// training: it is reported once, and so is a build without PLplot.
class CurvesKeeper {
 public:
  explicit CurvesKeeper(std::string run_dir) : run_dir_(std::move(run_dir)) {}
  /// After an epoch's metrics line was written; `epoch_seconds` is the epoch's training time.
  void after_epoch(double epoch_seconds);
  /// At the end of the run (finished or stopped): draws if anything is new since the last drawing.
  void at_end();

 private:
  void draw();
  std::string run_dir_;
  double draw_seconds_ = 0.05;
  bool pending_ = false;   ///< metrics written since the last drawing
  bool given_up_ = false;  ///< a drawing failed or cannot happen: reported, not tried again
};

}  // namespace dptrain
