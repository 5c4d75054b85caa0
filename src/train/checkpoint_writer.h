// CheckpointWriter: the file work of checkpoints (serialising, SHA-256, write, fsync, rename,
// `latest`, rotation: io/checkpoint_dir.h) on one background thread, so that the training thread
// only pays for taking the snapshot (a host copy of the parameters, optimizer state and train
// state) and goes back to queuing steps.
//
// Invariants:
//  - Writes run one at a time, in the order they were submitted (one thread, a FIFO queue), each
//    one atomic as CheckpointDir makes it: `latest` never names a file that is not complete, and
//    rotation never deletes the newest good checkpoint.
//  - At most `max_queued` snapshots wait at once: submit() blocks beyond that, so host memory is
//    bounded however slow the disk is.
//  - A write that fails is an error of the run: the next submit() or wait() rethrows it, on the
//    training thread, as it was thrown (one line naming the file and the system error). Writes
//    queued after a failed one are dropped, so no checkpoint newer than the failure appears; the
//    previous good checkpoint stays.
//  - The destructor finishes the queued writes (a run stopped by an exception still leaves its
//    snapshots on disk) and joins the thread. A failure that nothing reported yet (the run stopped
//    for another reason first) is printed as one "dptrain: warning:" line: never silently lost.
//  - Synchronous mode (asynchronous = false) runs each write inside submit(), on the caller's
//    thread: the path dptrain took before, kept for comparison (--sync-checkpoints).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace dptrain {

class CheckpointWriter {
 public:
  explicit CheckpointWriter(bool asynchronous = true, size_t max_queued = 2);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  /// Queues `write` after every write queued before it. First rethrows the failure of an earlier
  /// write, if any; blocks while max_queued writes are waiting.
  void submit(std::function<void()> write);
  /// Returns when every queued write has finished; rethrows the first failure, if any.
  void wait();
  /// Like wait(), for a run that is stopping with an error of its own: returns the first failure's
  /// message instead of throwing it (and counts it as reported), or nothing.
  std::optional<std::string> settle();

  bool asynchronous() const { return asynchronous_; }
  /// Seconds the writes took (on the writer thread, or inside submit when synchronous).
  double write_seconds() const;
  /// Seconds submit() and wait() held the caller waiting for the writer (a full queue, the end).
  double wait_seconds() const;
  /// Writes finished so far.
  size_t writes_done() const;

 private:
  void loop();
  void run_one(std::function<void()>& write);  // with mutex_ not held
  std::unique_lock<std::mutex> drain();         // waits until nothing is queued or writing; returns the lock
  void rethrow_failure();                       // with mutex_ held
  static std::string message(const std::exception_ptr& failure);

  const bool asynchronous_;
  const size_t max_queued_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::function<void()>> queue_;
  bool writing_ = false;  // the thread is running a write it took off the queue
  bool stopping_ = false;
  std::exception_ptr failure_;
  bool failure_reported_ = false;
  double write_seconds_ = 0;
  double wait_seconds_ = 0;
  size_t writes_done_ = 0;
  std::thread thread_;  // last: started once everything above exists
};

}  // namespace dptrain
