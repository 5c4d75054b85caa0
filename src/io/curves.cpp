#include "io/curves.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"

#if DPTRAIN_HAVE_PLOT
#include <plplot.h>
#endif

namespace dptrain {

namespace fs = std::filesystem;

namespace {

/// The name a run goes by: its folder's name ("runs/a/" and "runs/a/metrics.jsonl" are both "a").
std::string run_label(const fs::path& folder) {
  fs::path p = fs::absolute(folder).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

double number_field(const nlohmann::json& line, const char* key, const std::string& where) {
  const auto it = line.find(key);
  if (it == line.end() || !it->is_number()) throw InputError(where, std::string("'") + key + "' is missing or not a number");
  const double v = it->get<double>();
  if (!std::isfinite(v)) throw InputError(where, std::string("'") + key + "' is not finite");
  return v;
}

}  // namespace

RunCurves read_run_curves(const std::string& path) {
  const fs::path given(path);
  const bool is_file = fs::is_regular_file(given);
  const fs::path file = is_file ? given : given / "metrics.jsonl";
  if (!is_file && !fs::is_directory(given)) throw InputError(path, "no such run folder or metrics file");
  const std::string text = read_whole_file(file.string());
  RunCurves run;
  run.label = run_label(is_file ? given.parent_path() : given);
  std::istringstream in(text);
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = file.string() + ":" + std::to_string(number);
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) throw InputError(where, "not a JSON object (each line of metrics.jsonl is one epoch's metrics)");
    EpochPoint p;
    const double epoch = number_field(j, "epoch", where);
    if (epoch < 1 || epoch != std::floor(epoch) || epoch > 1e9) throw InputError(where, "'epoch' is not a whole number >= 1");
    p.epoch = static_cast<int>(epoch);
    p.train_loss = number_field(j, "train_loss", where);
    // An epoch without a test pass (train.eval_every) has neither test field.
    p.tested = j.contains("test_loss") || j.contains("test_accuracy");
    if (p.tested) {
      p.test_loss = number_field(j, "test_loss", where);
      p.test_accuracy = number_field(j, "test_accuracy", where);
    }
    p.images_per_second = number_field(j, "images_per_second", where);
    p.x = p.epoch;
    // A partial epoch sits where it stopped (metrics.jsonl since `samples` and `epoch_size`).
    if (j.value("partial_epoch", false) && j.contains("samples") && j.contains("epoch_size")) {
      const double size = number_field(j, "epoch_size", where);
      if (size > 0) p.x = p.epoch - 1 + std::clamp(number_field(j, "samples", where) / size, 0.0, 1.0);
    }
    // A later line of the same epoch (the resumed run finished it) replaces this one.
    if (!run.points.empty() && run.points.back().epoch == p.epoch) run.points.pop_back();
    run.points.push_back(p);
  }
  return run;
}

#if DPTRAIN_HAVE_PLOT

namespace {

// Colour map 0: the background, black for axes and text, light grey for grid lines, then one
// colour per run (matplotlib's tab10, which stays distinguishable for most colour vision).
constexpr int kBackground = 0, kBlack = 1, kGrid = 2, kFirstRun = 3;
constexpr std::array<std::array<int, 3>, 13> kColours = {{{255, 255, 255},
                                                          {0, 0, 0},
                                                          {215, 215, 215},
                                                          {31, 119, 180},
                                                          {255, 127, 14},
                                                          {44, 160, 44},
                                                          {214, 39, 40},
                                                          {148, 103, 189},
                                                          {140, 86, 75},
                                                          {227, 119, 194},
                                                          {127, 127, 127},
                                                          {188, 189, 34},
                                                          {23, 190, 207}}};
constexpr int kRunColours = static_cast<int>(kColours.size()) - kFirstRun;

int run_colour(size_t r) { return kFirstRun + static_cast<int>(r % kRunColours); }

struct Range {
  double lo = 0, hi = 1;
};

/// [lo, hi] of `values` widened by `pad` of its span on each side (a flat series by +-1 or 10%).
Range padded(const std::vector<double>& values, double pad) {
  const auto [mn, mx] = std::minmax_element(values.begin(), values.end());
  Range r{*mn, *mx};
  const double span = r.hi - r.lo;
  const double extra = span > 0 ? pad * span : std::max(std::abs(r.hi) * 0.1, 1e-3);
  r.lo -= extra, r.hi += extra;
  return r;
}

/// One PLplot stream of its own, ended (the file closed) when this goes out of scope.
class PlotStream {
 public:
  PlotStream() { plmkstrm(&id_); }
  ~PlotStream() {
    plsstrm(id_);
    plend1();
  }
  PlotStream(const PlotStream&) = delete;
  PlotStream& operator=(const PlotStream&) = delete;

 private:
  PLINT id_ = 0;
};

/// Axes, grid and labels of one panel in the viewport (normalised page coordinates).
void panel(std::array<double, 4> viewport, Range x, Range y, bool log_y, double x_tick, const char* y_label,
           const char* title) {
  plvpor(viewport[0], viewport[1], viewport[2], viewport[3]);
  plwind(x.lo, x.hi, y.lo, y.hi);
  plwidth(1);
  pllsty(1);
  plcol0(kGrid);
  plbox("g", x_tick, 0, log_y ? "gl" : "g", 0, 0);
  plcol0(kBlack);
  plbox("bcnst", x_tick, 0, log_y ? "bcnstvl" : "bcnstv", 0, 0);
  pllab("epoch", y_label, title);
}

/// A run's series: a line, and markers while there are few points (one point is only a marker).
void series(const std::vector<double>& x, const std::vector<double>& y, int colour, int style) {
  const PLINT n = static_cast<PLINT>(x.size());
  plcol0(colour);
  plwidth(2);
  pllsty(style);
  if (n > 1) plline(n, x.data(), y.data());
  pllsty(1);
  if (n <= 40) plpoin(n, x.data(), y.data(), 17);
}

}  // namespace

std::optional<std::string> plot_unavailable_reason() {
  static const std::optional<std::string> reason = []() -> std::optional<std::string> {
    // The devices PLplot found drivers for (it fills the caller's arrays, up to *count entries).
    std::array<const char*, 128> menus{}, names{};
    const char** menu = menus.data();
    const char** name = names.data();
    int count = static_cast<int>(names.size());
    plgDevs(&menu, &name, &count);
    for (int i = 0; i < count; ++i)
      if (name[i] != nullptr && std::string(name[i]) == "pngcairo") return std::nullopt;
    return "PLplot has no pngcairo device (apt-get install plplot-driver-cairo)";
  }();
  return reason;
}

void draw_curves(const std::vector<RunCurves>& all_runs, const std::string& png_path, int width, int height) {
  if (const auto why = plot_unavailable_reason()) throw PlotUnavailable(*why);
  std::vector<const RunCurves*> runs;
  for (const RunCurves& r : all_runs)
    if (!r.points.empty()) runs.push_back(&r);
  if (runs.empty()) throw InputError(png_path, "nothing to draw: no run has an epoch in its metrics.jsonl yet");
  if (width < 200 || height < 150 || width > 10000 || height > 10000)
    throw InputError(png_path, "image size " + std::to_string(width) + "x" + std::to_string(height) + " is out of range");

  // Everything PLplot would otherwise find out for itself, by prompting on stdin or exiting:
  // the output file must be writable (it is drawn into a temporary file next to it, then renamed).
  const fs::path target(png_path);
  const fs::path temp = target.string() + ".tmp" + std::to_string(getpid());
  if (!std::ofstream(temp, std::ios::binary | std::ios::trunc))
    throw InputError(png_path, "cannot write here (" + temp.string() + " cannot be created)");

  std::vector<double> xs, losses, accuracies, rates;
  bool log_loss = true;
  for (const RunCurves* r : runs)
    for (const EpochPoint& p : r->points) {
      xs.push_back(p.x);
      losses.push_back(p.train_loss);
      if (p.tested) losses.push_back(p.test_loss), accuracies.push_back(100.0 * p.test_accuracy);
      rates.push_back(p.images_per_second);
      log_loss = log_loss && p.train_loss > 0 && (!p.tested || p.test_loss > 0);
    }
  if (accuracies.empty()) accuracies = {0.0, 100.0};  // no test pass yet: an empty panel
  const double last_x = *std::max_element(xs.begin(), xs.end());
  const Range x{0, std::max(1.0, std::ceil(last_x - 1e-9)) + 0.25};
  const double x_tick = std::max(1.0, std::ceil((x.hi - 0.25) / 12.0));
  auto loss_value = [&](double v) { return log_loss ? std::log10(v) : v; };
  std::vector<double> loss_axis;
  for (double v : losses) loss_axis.push_back(loss_value(v));
  Range loss_range = padded(loss_axis, 0.08);
  if (log_loss && std::floor(loss_range.hi) < loss_range.lo) {
    // A log axis is labelled at powers of ten only: reach the nearest one.
    const double below = std::floor(loss_range.lo), above = std::ceil(loss_range.hi);
    (loss_range.lo - below < above - loss_range.hi ? loss_range.lo : loss_range.hi) =
        loss_range.lo - below < above - loss_range.hi ? below : above;
  }
  Range accuracy_range = padded(accuracies, 0.1);
  accuracy_range.hi = std::min(accuracy_range.hi, 100.0 + (accuracy_range.hi - accuracy_range.lo) * 0.02);
  accuracy_range.lo = std::max(accuracy_range.lo, 0.0);
  const double rate_scale = *std::max_element(rates.begin(), rates.end()) >= 10000 ? 1000.0 : 1.0;
  const Range rate_range{0, std::max(1.0, *std::max_element(rates.begin(), rates.end()) / rate_scale * 1.1)};

  {
    PlotStream stream;
    plsdev("pngcairo");
    plsfnam(temp.c_str());
    plspage(0, 0, width, height, 0, 0);
    std::array<PLINT, kColours.size()> red{}, green{}, blue{};
    for (size_t i = 0; i < kColours.size(); ++i) red[i] = kColours[i][0], green[i] = kColours[i][1], blue[i] = kColours[i][2];
    plscmap0(red.data(), green.data(), blue.data(), static_cast<PLINT>(kColours.size()));
    plinit();
    pladv(0);
    plschr(0, 0.85);

    panel({0.08, 0.47, 0.60, 0.94}, x, loss_range, log_loss, x_tick, log_loss ? "loss (log scale)" : "loss",
          "train loss (solid) and test loss (dashed)");
    for (size_t r = 0; r < runs.size(); ++r) {
      std::vector<double> px, train, test;
      std::vector<double> tx;
      for (const EpochPoint& p : runs[r]->points) {
        px.push_back(p.x), train.push_back(loss_value(p.train_loss));
        if (p.tested) tx.push_back(p.x), test.push_back(loss_value(p.test_loss));
      }
      series(px, train, run_colour(r), 1);
      series(tx, test, run_colour(r), 2);
    }

    panel({0.58, 0.97, 0.60, 0.94}, x, accuracy_range, false, x_tick, "test accuracy (%)", "test accuracy");
    for (size_t r = 0; r < runs.size(); ++r) {
      std::vector<double> px, acc;
      for (const EpochPoint& p : runs[r]->points)
        if (p.tested) px.push_back(p.x), acc.push_back(100.0 * p.test_accuracy);
      series(px, acc, run_colour(r), 1);
    }

    panel({0.08, 0.47, 0.09, 0.42}, x, rate_range, false, x_tick,
          rate_scale > 1 ? "thousand images/s" : "images/s", "training speed (images/s)");
    for (size_t r = 0; r < runs.size(); ++r) {
      std::vector<double> px, rate;
      for (const EpochPoint& p : runs[r]->points) px.push_back(p.x), rate.push_back(p.images_per_second / rate_scale);
      series(px, rate, run_colour(r), 1);
    }

    // The legend: a line per run (its colour, its last accuracy), then the two line styles.
    plvpor(0.56, 0.97, 0.09, 0.42);
    plwind(0, 1, 0, 1);
    std::vector<std::string> texts;
    std::vector<PLINT> options, text_colours, line_colours, line_styles;
    std::vector<PLFLT> line_widths;
    for (size_t r = 0; r < runs.size(); ++r) {
      const auto& points = runs[r]->points;
      const auto tested = std::find_if(points.rbegin(), points.rend(), [](const EpochPoint& p) { return p.tested; });
      const EpochPoint& last = tested != points.rend() ? *tested : points.back();
      std::string label = runs[r]->label.size() > 40 ? runs[r]->label.substr(0, 37) + "..." : runs[r]->label;
      char tail[64];
      if (!last.tested)
        std::snprintf(tail, sizeof tail, ": no test pass yet");
      else if (last.x < last.epoch)  // stopped partway through it
        std::snprintf(tail, sizeof tail, ": %.2f%% at epoch %.2f", 100.0 * last.test_accuracy, last.x);
      else
        std::snprintf(tail, sizeof tail, ": %.2f%% at epoch %d", 100.0 * last.test_accuracy, last.epoch);
      texts.push_back(label + tail);
      line_colours.push_back(run_colour(r));
      line_styles.push_back(1);
    }
    texts.push_back("train loss"), line_colours.push_back(kBlack), line_styles.push_back(1);
    texts.push_back("test loss"), line_colours.push_back(kBlack), line_styles.push_back(2);
    const size_t n = texts.size();
    std::vector<const char*> text_ptrs;
    for (const std::string& t : texts) text_ptrs.push_back(t.c_str());
    options.assign(n, PL_LEGEND_LINE);
    text_colours.assign(n, kBlack);
    line_widths.assign(n, 2.0);
    const double text_scale = std::min(1.0, 12.0 / static_cast<double>(n));
    PLFLT legend_width = 0, legend_height = 0;
    pllegend(&legend_width, &legend_height, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX,
             PL_POSITION_LEFT | PL_POSITION_TOP | PL_POSITION_INSIDE, 0.02, 0.02, 0.12, kBackground, kBlack, 1, 0, 0,
             static_cast<PLINT>(n), options.data(), 1.0, text_scale, 2.0, 0.0, text_colours.data(), text_ptrs.data(),
             nullptr, nullptr, nullptr, nullptr, line_colours.data(), line_styles.data(), line_widths.data(), nullptr,
             nullptr, nullptr, nullptr);
  }  // plend1: the file is complete

  std::error_code ec;
  fs::rename(temp, target, ec);
  if (ec) {
    std::error_code ignored;  // the rename's error is the one to report
    fs::remove(temp, ignored);
    throw std::runtime_error(png_path + ": cannot write the image: " + ec.message());
  }
}

#else  // built without PLplot

std::optional<std::string> plot_unavailable_reason() {
  return std::string("built without PLplot (apt-get install libplplot-dev plplot-driver-cairo)");
}

void draw_curves(const std::vector<RunCurves>&, const std::string&, int, int) {
  throw PlotUnavailable(*plot_unavailable_reason());
}

#endif

void CurvesKeeper::after_epoch(double epoch_seconds) {
  pending_ = true;
  if (given_up_ || plot_unavailable_reason()) return;  // at_end says why, once
  if (draw_seconds_ <= 0.02 * epoch_seconds) draw();
}

void CurvesKeeper::at_end() {
  if (given_up_) return;
  if (const auto why = plot_unavailable_reason()) {
    std::fprintf(stderr, "dptrain: plotting skipped: %s\n", why->c_str());
    std::fflush(stderr);
    given_up_ = true;
    return;
  }
  if (pending_ || !fs::exists(fs::path(run_dir_) / "curves.png")) draw();
}

void CurvesKeeper::draw() {
  const auto start = std::chrono::steady_clock::now();
  try {
    const RunCurves run = read_run_curves(run_dir_);
    if (run.points.empty()) return;  // no epoch ended yet
    draw_curves({run}, (fs::path(run_dir_) / "curves.png").string());
    pending_ = false;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dptrain: warning: curves.png not drawn: %s\n", e.what());
    std::fflush(stderr);
    given_up_ = true;
  }
  draw_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace dptrain
