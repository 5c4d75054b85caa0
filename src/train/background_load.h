// BackgroundLoad<T>: host work that the start-up does beside the device's initialisation (reading
// and decompressing the data while CUDA, cuDNN and cuBLAS start), on a thread of its own.
//
// Invariants:
//  - get() returns the value, or rethrows what the work threw, as it was thrown (an InputError
//    naming a malformed data file stays one, so main reports it as one line and exits 2, exactly as
//    when the data was read on the main thread).
//  - If get() is never called (the main thread failed first), the destructor waits for the work
//    and drops its result or error: the main thread's error is the one reported.
#pragma once

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <utility>

#include "train/startup_timer.h"

namespace dptrain {

template <typename T>
class BackgroundLoad {
 public:
  explicit BackgroundLoad(std::function<T()> work)
      : seconds_(std::make_shared<double>(0.0)),
        future_(std::async(std::launch::async, [work = std::move(work), seconds = seconds_] {
          const auto t0 = std::chrono::steady_clock::now();
          T value = work();
          *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          return value;
        })) {}

  /// Waits for the work and returns its value (rethrows its error). With a timer: the work's own
  /// time is recorded as overlapped `name`, and the wait as the phase `name`_wait.
  T get(StartupTimer* timer = nullptr, const std::string& name = "") {
    T value = future_.get();
    if (timer != nullptr) {
      timer->add_overlapped(name, *seconds_);
      timer->mark(name + "_wait");
    }
    return value;
  }

 private:
  std::shared_ptr<double> seconds_;  // written by the thread before its value is ready
  std::future<T> future_;
};

}  // namespace dptrain
