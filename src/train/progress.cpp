#include "train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

namespace dptrain {

Progress::Progress(bool enabled, int64_t first_step, int64_t total_steps, int log_every, std::FILE* out)
    : enabled_(enabled),
      tty_(enabled && isatty(fileno(out)) == 1),
      first_(first_step),
      total_(std::max<int64_t>(total_steps, 1)),
      log_every_(log_every),
      out_(out),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

bool Progress::due(int64_t step) const {
  if (!enabled_) return false;
  if (!tty_) return step % log_every_ == 0 || step == total_;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ < std::chrono::milliseconds(200) && step != total_) return false;
  last_draw_ = now;
  return true;
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  const long t = std::lround(s);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
  return buf;
}

double eta_seconds(int64_t first_step, int64_t step, int64_t total, double elapsed) {
  const int64_t taken = step - first_step;
  if (taken <= 0 || !(elapsed >= 0)) return NAN;
  return elapsed * static_cast<double>(std::max<int64_t>(total - step, 0)) / static_cast<double>(taken);
}

void Progress::update(int64_t step, int epoch, double loss, double images_per_second) {
  if (!enabled_) return;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double done = static_cast<double>(step) / static_cast<double>(total_);  // of the whole run, for the bar
  const double eta = eta_seconds(first_, step, total_, elapsed);
  if (tty_) {
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(done * kWidth);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(kWidth, '.');
    std::fprintf(out_, "\r[%s] step %lld/%lld  epoch %d  loss %.4f  %.0f img/s  ETA %s \x1b[K", bar.c_str(),
                 static_cast<long long>(step), static_cast<long long>(total_), epoch, loss, images_per_second,
                 format_duration(eta).c_str());
    drawn_ = true;
  } else {
    std::fprintf(out_, "step %lld/%lld epoch %d loss %.4f %.0f img/s eta %s\n", static_cast<long long>(step),
                 static_cast<long long>(total_), epoch, loss, images_per_second, format_duration(eta).c_str());
  }
  std::fflush(out_);
}

void Progress::clear() {
  if (tty_ && drawn_) {
    std::fputs("\r\x1b[K", out_);
    std::fflush(out_);
    drawn_ = false;
  }
}

}  // namespace dptrain
