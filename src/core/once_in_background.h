// once_in_background<Work>(): runs `Work` once per process on a thread of its own, started by the
// first call; every call returns the same shared future, whose get() waits for the result (or
// rethrows what Work threw, at every call).
//
// For start-up work that may be asked for early (to overlap) or only when needed (core/
// cublas_loader.cpp, core/cudnn_preload.cpp). At exit the static future is the last one holding
// std::async's result, so its destructor waits for a load still in flight rather than abandon it.
#pragma once

#include <future>
#include <mutex>

namespace dptrain {

template <auto Work>
std::shared_future<decltype(Work())>& once_in_background() {
  static std::once_flag started;
  static std::shared_future<decltype(Work())> result;
  std::call_once(started, [] { result = std::async(std::launch::async, Work).share(); });
  return result;
}

}  // namespace dptrain
