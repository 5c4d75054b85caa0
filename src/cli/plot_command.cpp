// dptrain plot: training curves of one or more run folders in one PNG (io/curves.h), one colour
// per run. Exit status 2 for a missing or malformed metrics.jsonl (the line is named), 1 when this
// build or machine cannot draw (no PLplot, or no pngcairo driver).
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "io/curves.h"

namespace dptrain::cli {

namespace {

struct PlotArgs {
  std::vector<std::string> runs;
  std::string out;
  int width = 1200;
  int height = 800;
};

int run_plot(const PlotArgs& a) {
  if (const auto why = plot_unavailable_reason()) throw PlotUnavailable("cannot plot: " + *why);
  std::vector<RunCurves> runs;
  for (const std::string& path : a.runs) runs.push_back(read_run_curves(path));
  // Runs that share a folder name (a/run, b/run) are told apart by the path as given.
  std::map<std::string, int> uses;
  for (const RunCurves& r : runs) ++uses[r.label];
  for (size_t i = 0; i < runs.size(); ++i)
    if (uses[runs[i].label] > 1) runs[i].label = a.runs[i];
  const std::string out =
      !a.out.empty() ? a.out
                     : (runs.size() == 1 && std::filesystem::is_directory(a.runs[0])
                            ? (std::filesystem::path(a.runs[0]) / "curves.png").string()
                            : std::string("curves.png"));
  draw_curves(runs, out, a.width, a.height);
  size_t points = 0;
  for (const RunCurves& r : runs) points += r.points.size();
  std::printf("wrote %s: %zu run(s), %zu epoch line(s)\n", out.c_str(), runs.size(), points);
  return 0;
}

}  // namespace

Command add_plot(CLI::App& app) {
  auto args = std::make_shared<PlotArgs>();
  CLI::App* sub = app.add_subcommand(
      "plot", "Draw the training curves (loss, test accuracy, images/s per epoch) of run folders into a PNG");
  sub->add_option("RUN_DIR", args->runs, "Run folders (or their metrics.jsonl files), one line colour each")->required();
  sub->add_option("--out", args->out, "PNG file (default: RUN_DIR/curves.png for one run, curves.png for several)");
  sub->add_option("--width", args->width, "Image width in pixels")->check(CLI::Range(200, 10000));
  sub->add_option("--height", args->height, "Image height in pixels")->check(CLI::Range(150, 10000));
  return [args] { return run_plot(*args); };
}

}  // namespace dptrain::cli
