#include "train/checkpoint_writer.h"

#include <chrono>
#include <cstdio>
#include <exception>
#include <utility>

namespace dptrain {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_from(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

CheckpointWriter::CheckpointWriter(bool asynchronous, size_t max_queued)
    : asynchronous_(asynchronous), max_queued_(max_queued < 1 ? 1 : max_queued) {
  if (asynchronous_) thread_ = std::thread([this] { loop(); });
}

CheckpointWriter::~CheckpointWriter() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (failure_ && !failure_reported_) {
    std::fprintf(stderr, "dptrain: warning: %s (a checkpoint write that failed while the run stopped)\n",
                 message(failure_).c_str());
    std::fflush(stderr);
  }
}

std::string CheckpointWriter::message(const std::exception_ptr& failure) {
  try {
    std::rethrow_exception(failure);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error";
  }
}

void CheckpointWriter::rethrow_failure() {
  if (!failure_ || failure_reported_) return;
  failure_reported_ = true;  // once: the run stops with it; later calls (the end) do not repeat it
  std::rethrow_exception(failure_);
}

void CheckpointWriter::run_one(std::function<void()>& write) {
  const Clock::time_point t0 = Clock::now();
  std::exception_ptr failed;
  try {
    write();
  } catch (...) {
    failed = std::current_exception();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  write_seconds_ += seconds_from(t0);
  ++writes_done_;
  if (failed && !failure_) failure_ = failed;
}

void CheckpointWriter::submit(std::function<void()> write) {
  if (!asynchronous_) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      rethrow_failure();
    }
    run_one(write);
    std::lock_guard<std::mutex> lock(mutex_);
    rethrow_failure();
    return;
  }
  std::unique_lock<std::mutex> lock(mutex_);
  rethrow_failure();
  const Clock::time_point t0 = Clock::now();
  changed_.wait(lock, [this] { return queue_.size() < max_queued_ || failure_ != nullptr; });
  wait_seconds_ += seconds_from(t0);
  rethrow_failure();
  queue_.push_back(std::move(write));
  lock.unlock();
  changed_.notify_all();
}

std::unique_lock<std::mutex> CheckpointWriter::drain() {
  std::unique_lock<std::mutex> lock(mutex_);
  const Clock::time_point t0 = Clock::now();
  changed_.wait(lock, [this] { return queue_.empty() && !writing_; });
  wait_seconds_ += seconds_from(t0);
  return lock;
}

void CheckpointWriter::wait() {
  const std::unique_lock<std::mutex> lock = drain();
  rethrow_failure();
}

std::optional<std::string> CheckpointWriter::settle() {
  const std::unique_lock<std::mutex> lock = drain();
  if (!failure_ || failure_reported_) return std::nullopt;
  failure_reported_ = true;
  return message(failure_);
}

void CheckpointWriter::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    changed_.wait(lock, [this] { return !queue_.empty() || stopping_; });
    if (queue_.empty()) return;  // stopping, and every queued write is done
    std::function<void()> write = std::move(queue_.front());
    queue_.pop_front();
    if (failure_) {  // after a failure nothing newer is written
      changed_.notify_all();
      continue;
    }
    writing_ = true;
    lock.unlock();
    run_one(write);
    write = nullptr;  // the snapshot it held is freed outside the lock
    lock.lock();
    writing_ = false;
    changed_.notify_all();
  }
}

double CheckpointWriter::write_seconds() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return write_seconds_;
}

double CheckpointWriter::wait_seconds() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return wait_seconds_;
}

size_t CheckpointWriter::writes_done() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return writes_done_;
}

}  // namespace dptrain
