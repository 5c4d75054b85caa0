// The start-up breakdown (train/startup_timer.h), the background load beside CUDA init
// (train/background_load.h) and the background checkpoint writer (train/checkpoint_writer.h):
// phases tile the total, errors on the loading thread reach the caller as thrown, writes run in
// submission order and a failed write stops later ones and surfaces on the caller's thread, and a
// checkpoint written by the writer thread is byte-identical to one written synchronously.
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <future>
#include <mutex>
#include <stdexcept>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/checkpoint_dir.h"
#include "train/background_load.h"
#include "train/checkpoint_writer.h"
#include "train/startup_timer.h"

namespace dptrain {
namespace {

namespace fs = std::filesystem;

TEST(StartupTimer, PhasesTileTheTotalInOrder) {
  StartupTimer t(StartupTimer::Clock::now(), 0.25);
  t.mark("a");
  t.mark("b");
  t.add_overlapped("read", 123.0);  // beside the phases: not in the sum
  const nlohmann::json j = t.to_json();
  EXPECT_EQ(j["from"], "exec");
  EXPECT_EQ(j["order"], nlohmann::json({"process_start", "a", "b"}));
  double sum = 0;
  for (const auto& [name, s] : j["phases"].items()) {
    EXPECT_GE(s.get<double>(), 0.0) << name;
    sum += s.get<double>();
  }
  EXPECT_DOUBLE_EQ(j["phases"]["process_start"].get<double>(), 0.25);
  EXPECT_NEAR(sum, j["total_s"].get<double>(), 1e-9);
  EXPECT_EQ(j["overlapped"]["read"].get<double>(), 123.0);
  EXPECT_FALSE(j.contains("plans")) << "no planning: absent, not empty";
}

TEST(StartupTimer, WithoutTheProcessStartItCountsFromMain) {
  StartupTimer t(StartupTimer::Clock::now(), std::nullopt);
  t.mark("only");
  const nlohmann::json j = t.to_json();
  EXPECT_EQ(j["from"], "main");
  EXPECT_FALSE(j["phases"].contains("process_start"));
  EXPECT_FALSE(j.contains("overlapped"));
}

TEST(StartupTimer, PartsAreClippedToTheSpanAndTheRestTakesTheRemainder) {
  StartupTimer t(StartupTimer::Clock::now() - std::chrono::milliseconds(50), std::nullopt);
  t.mark_parts({{"context", 1000.0}}, "handles");  // a reported part longer than the span is clipped
  const nlohmann::json j = t.to_json();
  EXPECT_GE(j["phases"]["handles"].get<double>(), 0.0);
  EXPECT_NEAR(j["phases"]["context"].get<double>() + j["phases"]["handles"].get<double>(), j["total_s"].get<double>(),
              1e-9);
}

TEST(StartupTimer, NothingIsAddedAfterFinish) {
  StartupTimer t(StartupTimer::Clock::now(), std::nullopt);
  t.mark("first_step");
  t.add_plan("conv1", 64, "forward", 0.5);
  t.finish();
  const double total = t.total();
  t.mark("later");
  t.add_plan("conv2", 64, "forward", 0.5);
  EXPECT_EQ(t.phases().size(), 1u);
  EXPECT_EQ(t.total(), total);
  const nlohmann::json j = t.to_json();
  ASSERT_EQ(j["plans"].size(), 1u);
  EXPECT_EQ(j["plans"][0]["layer"], "conv1");
  EXPECT_EQ(j["plans"][0]["direction"], "forward");
  const std::string table = t.table("start-up");
  EXPECT_NE(table.find("first_step"), std::string::npos) << table;
  EXPECT_NE(table.find("conv1"), std::string::npos) << table;
  EXPECT_EQ(table.find("later"), std::string::npos) << table;
}

TEST(StartupTimer, TheProcessStartIsReadableHere) {
  const std::optional<double> s = seconds_since_process_start();
  ASSERT_TRUE(s.has_value()) << "/proc/self/stat should be readable on Linux";
  EXPECT_GE(*s, 0.0);
}

TEST(BackgroundLoad, ReturnsTheValueAndRecordsTheWorkAsOverlapped) {
  StartupTimer t(StartupTimer::Clock::now(), std::nullopt);
  BackgroundLoad<std::vector<int>> load([] { return std::vector<int>{1, 2, 3}; });
  EXPECT_EQ(load.get(&t, "data_read"), (std::vector<int>{1, 2, 3}));
  const nlohmann::json j = t.to_json();
  EXPECT_TRUE(j["overlapped"].contains("data_read"));
  EXPECT_TRUE(j["phases"].contains("data_read_wait"));
}

TEST(BackgroundLoad, AnInputErrorOnTheThreadReachesTheCallerAsAnInputError) {
  BackgroundLoad<int> load([]() -> int { throw InputError("data/train-images-idx3-ubyte", "truncated"); });
  try {
    load.get();
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("data/train-images-idx3-ubyte"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
}

TEST(BackgroundLoad, NeverWaitedForItIsWaitedForAtTheEnd) {
  std::promise<void> started;
  bool done = false;
  {
    BackgroundLoad<int> load([&] {
      started.set_value();
      done = true;
      return 1;
    });
    started.get_future().wait();
  }  // the destructor waits: `done` is not touched after the load is gone
  EXPECT_TRUE(done);
}

TEST(CheckpointWriter, WritesRunInSubmissionOrderWithSeveralInFlight) {
  std::promise<void> gate;
  std::shared_future<void> open = gate.get_future().share();
  std::mutex m;
  std::vector<int> order;
  // Room for all five: a full queue would block this thread while the first write waits for it.
  CheckpointWriter writer(/*asynchronous=*/true, /*max_queued=*/8);
  for (int i = 0; i < 5; ++i)
    writer.submit([&, i] {
      if (i == 0) open.wait();  // the first write holds the others in the queue
      std::lock_guard<std::mutex> lock(m);
      order.push_back(i);
    });
  {
    std::lock_guard<std::mutex> lock(m);
    EXPECT_TRUE(order.empty()) << "the submits returned while the first write was still blocked";
  }
  gate.set_value();
  writer.wait();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(writer.writes_done(), 5u);
}

TEST(CheckpointWriter, AFailedWriteStopsLaterOnesAndSurfacesAtTheNextSubmit) {
  std::promise<void> gate;
  std::shared_future<void> open = gate.get_future().share();
  std::vector<int> written;
  CheckpointWriter writer(true, 4);
  writer.submit([&] { written.push_back(1); });
  writer.submit([&] {
    open.wait();
    throw std::runtime_error("runs/x/ckpt-00000020.safetensors: cannot write: No space left on device");
  });
  writer.submit([&] { written.push_back(3); });  // queued behind the failure: dropped
  gate.set_value();
  EXPECT_THROW(writer.wait(), std::runtime_error);
  EXPECT_EQ(written, std::vector<int>{1});
  writer.wait();  // reported once: the end of a run that already failed does not throw again
}

TEST(CheckpointWriter, TheFailureComesBackOnTheCallersThreadAsThrown) {
  CheckpointWriter writer(true, 2);
  writer.submit([] { throw InputError("runs/x", "injected"); });
  try {
    // Either this submit (if the failure is known by then) or the wait reports it.
    writer.submit([] {});
    writer.wait();
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("injected"), std::string::npos);
  }
}

TEST(CheckpointWriter, AFullQueueHoldsTheSubmitterUntilAWriteFinishes) {
  std::promise<void> gate;
  std::shared_future<void> open = gate.get_future().share();
  std::atomic<int> written{0};
  CheckpointWriter writer(true, /*max_queued=*/1);
  std::promise<void> started;
  writer.submit([&] {
    started.set_value();
    open.wait(), ++written;
  });
  started.get_future().wait();        // the first write is running, the queue is empty
  writer.submit([&] { ++written; });  // fills the queue
  std::thread third([&] { writer.submit([&] { ++written; }); });  // blocks until the queue has room
  gate.set_value();
  third.join();
  writer.wait();
  EXPECT_EQ(written.load(), 3);
}

TEST(CheckpointWriter, SynchronousModeWritesInsideSubmit) {
  CheckpointWriter writer(/*asynchronous=*/false);
  int written = 0;
  writer.submit([&] { ++written; });
  EXPECT_EQ(written, 1);
  EXPECT_THROW(writer.submit([] { throw std::runtime_error("disk"); }), std::runtime_error);
}

TEST(CheckpointWriter, TheDestructorFinishesQueuedWrites) {
  std::promise<void> gate;
  std::shared_future<void> open = gate.get_future().share();
  int written = 0;
  {
    CheckpointWriter writer(true, 4);
    writer.submit([&] { open.wait(); });
    writer.submit([&] { ++written; });
    gate.set_value();
  }
  EXPECT_EQ(written, 1);
}

// A failure nothing reported (the run stopped for another reason first) is never silently lost:
// settle() hands it over once; otherwise the destructor prints it as one warning line.
TEST(CheckpointWriter, AFailureNothingReportedIsSettledOrPrintedAtTheEnd) {
  {
    CheckpointWriter writer(true, 2);
    writer.submit([] { throw std::runtime_error("runs/x/ckpt-00000003.safetensors: cannot write: disk full"); });
    EXPECT_EQ(writer.settle(), std::optional<std::string>("runs/x/ckpt-00000003.safetensors: cannot write: disk full"));
    EXPECT_EQ(writer.settle(), std::nullopt);  // handed over once
    testing::internal::CaptureStderr();
  }
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "") << "settled: nothing more to say";
  testing::internal::CaptureStderr();
  {
    CheckpointWriter writer(true, 2);
    writer.submit([] { throw std::runtime_error("runs/x/ckpt-00000004.safetensors: cannot write: disk full"); });
  }
  EXPECT_EQ(testing::internal::GetCapturedStderr(),
            "dptrain: warning: runs/x/ckpt-00000004.safetensors: cannot write: disk full (a checkpoint write that "
            "failed while the run stopped)\n");
  CheckpointWriter healthy(true, 2);
  healthy.submit([] {});
  EXPECT_EQ(healthy.settle(), std::nullopt);
}

/// A small checkpoint's tensors and state.
struct Sample {
  std::vector<float> w{1.5f, -2.25f, 3.0f, 0.125f}, slot{0.5f, 0.25f, 0.0f, -1.0f};
  std::vector<NamedTensor> model{{"fc.weight", {2, 2}, std::span<const float>(w)}};
  std::vector<NamedTensor> opt{{optimizer_tensor_name("fc.weight", "sq"), {2, 2}, std::span<const float>(slot)}};
  CheckpointState state;
  Sample() {
    state.config_yaml = "name: t\n";
    state.global_step = 7;
  }
};

TEST(CheckpointWriter, AsynchronousFilesAreByteIdenticalToSynchronousOnes) {
  const fs::path root = fs::temp_directory_path() / ("dptrain_writer_" + std::to_string(getpid()));
  fs::remove_all(root);
  const Sample s;
  for (const bool async : {false, true}) {
    CheckpointDir dir((root / (async ? "async" : "sync")).string(), 2);
    CheckpointWriter writer(async);
    for (int64_t step : {5, 10, 15})
      writer.submit([&dir, &s, step] {
        dir.save(step, s.model, s.opt, s.state);
        dir.save_best(s.model, s.opt, s.state);
      });
    writer.wait();
  }
  for (const char* name : {"ckpt-00000010.safetensors", "ckpt-00000015.safetensors", "best.safetensors", "latest"}) {
    EXPECT_EQ(read_file_bytes((root / "sync" / name).string()), read_file_bytes((root / "async" / name).string())) << name;
  }
  EXPECT_FALSE(fs::exists(root / "async" / "ckpt-00000005.safetensors")) << "rotation keeps the newest 2";
  fs::remove_all(root);
}

}  // namespace
}  // namespace dptrain
