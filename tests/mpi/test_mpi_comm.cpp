// dptrain_mpi_tests: the communicators across real processes (nccl-tests' -c check). Started by
// CTest as `mpirun -np 2` and `-np 3` (tests/mpi/CMakeLists.txt); every rank runs every test.
//
// Rules that keep a failure from turning into a hang: tests use EXPECT (never ASSERT) around
// collectives so every rank issues the same collectives in the same order; every skip decision is
// agreed by all ranks (all_agree); the exit status is the worst over ranks.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "comm/bootstrap.h"
#include "comm/gradient_reducer.h"
#include "comm/mpi_communicator.h"
#include "core/buffer.h"
#include "core/device_context.h"
#include "core/error.h"
#include "io/plan_cache.h"
#include "train/plan_sharing.h"
#include "layers/cross_rank_sum.h"
#include "layers/layer_factory.h"
#if DPTRAIN_HAVE_CUDA
#include "comm/nccl_communicator.h"
#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "layers/layer_factory.h"
#include "train/runtime.h"
#endif

namespace dptrain {
namespace {

MpiSession* g_session = nullptr;

const MpiSession& session() { return *g_session; }

// True on every rank iff `local` is true on every rank.
bool all_agree(bool local) {
  int v = local ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return v == 1;
}

// True iff `data` holds the same bytes on every rank (compares against rank 0's copy).
bool identical_across_ranks(const std::vector<float>& data) {
  std::vector<float> root = data;
  MPI_Bcast(root.data(), static_cast<int>(root.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
  return all_agree(std::memcmp(root.data(), data.data(), data.size() * sizeof(float)) == 0);
}

// Exactly representable values: their sums over ranks are exact in float.
float exact_value(size_t i) { return static_cast<float>(static_cast<int>(i % 97) - 40) * 0.5f; }

TEST(MpiComm, WorldIsSeveralRanks) {
  EXPECT_GE(session().size(), 2) << "run under mpirun -np N, N >= 2";
  EXPECT_LT(session().rank(), session().size());
  EXPECT_GE(session().local_rank(), 0);
  EXPECT_LE(session().local_size(), session().size());
  EXPECT_FALSE(session().hostname().empty());
}

TEST(MpiComm, AllReduceSumMatchesClosedForm) {
  MpiCommunicator comm(session());
  const int p = comm.size();
  const float weight_sum = static_cast<float>(p * (p + 1) / 2);  // sum over ranks of (rank + 1)
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}, size_t{(1u << 20) + 3}}) {
    std::vector<float> data(n);
    for (size_t i = 0; i < n; ++i) data[i] = static_cast<float>(comm.rank() + 1) * exact_value(i);
    comm.all_reduce_sum(data, nullptr);
    size_t wrong = 0;
    for (size_t i = 0; i < n; ++i) wrong += data[i] != weight_sum * exact_value(i);
    EXPECT_EQ(wrong, 0u) << "n " << n << " rank " << comm.rank();
    EXPECT_TRUE(identical_across_ranks(data)) << "n " << n;
  }
}

TEST(MpiComm, InexactSumsAreBitwiseIdenticalAcrossRanks) {
  // Rounding makes the order of additions visible; every rank must still end with the same bits,
  // close to the exact (double) sum.
  MpiCommunicator comm(session());
  const size_t n = 100003;
  std::vector<std::vector<float>> per_rank(static_cast<size_t>(comm.size()), std::vector<float>(n));
  for (int r = 0; r < comm.size(); ++r) {
    std::mt19937 rng(1000 + r);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (float& x : per_rank[static_cast<size_t>(r)]) x = u(rng) * std::pow(10.0f, static_cast<float>(r % 4));
  }
  std::vector<float> data = per_rank[static_cast<size_t>(comm.rank())];
  comm.all_reduce_sum(data, nullptr);
  double worst = 0;
  for (size_t i = 0; i < n; ++i) {
    double exact = 0;
    double scale = 0;
    for (const auto& v : per_rank) {
      exact += v[i];
      scale += std::abs(v[i]);
    }
    worst = std::max(worst, std::abs(data[i] - exact) / std::max(scale, 1e-30));
  }
  EXPECT_LT(worst, 4e-7 * comm.size());
  EXPECT_TRUE(identical_across_ranks(data));
}

TEST(MpiComm, BroadcastFromEveryRoot) {
  MpiCommunicator comm(session());
  for (int root = 0; root < comm.size(); ++root) {
    std::vector<float> data(5000, -1.0f);
    if (comm.rank() == root)
      for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(root * 10000 + static_cast<int>(i));
    comm.broadcast(data, root, nullptr);
    size_t wrong = 0;
    for (size_t i = 0; i < data.size(); ++i) wrong += data[i] != static_cast<float>(root * 10000 + static_cast<int>(i));
    EXPECT_EQ(wrong, 0u) << "root " << root;
  }
  std::vector<float> one(1);
  EXPECT_THROW(comm.broadcast(one, comm.size(), nullptr), std::invalid_argument);
}

TEST(MpiComm, ScalarReductions) {
  MpiCommunicator comm(session());
  const int p = comm.size();
  const double r = comm.rank();
  EXPECT_EQ(comm.all_reduce_scalar(r + 1, ReduceOp::Sum), p * (p + 1) / 2.0);
  EXPECT_EQ(comm.all_reduce_scalar(r + 1, ReduceOp::Max), static_cast<double>(p));
  EXPECT_EQ(comm.all_reduce_scalar(r + 1, ReduceOp::Min), 1.0);
  // A sum that rounds: the same bits on every rank.
  const double s = comm.all_reduce_scalar(0.1 * (r + 1) + 1e-17 * r, ReduceOp::Sum);
  double root = s;
  MPI_Bcast(&root, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  EXPECT_TRUE(all_agree(std::memcmp(&root, &s, sizeof s) == 0));
}

TEST(MpiComm, BarrierWaitsForTheLastRank) {
  MpiCommunicator comm(session());
  comm.barrier();
  const auto start = std::chrono::steady_clock::now();
  if (comm.rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  comm.barrier();
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(waited, 0.25) << "rank " << comm.rank() << " left the barrier before rank 0 arrived";
}

TEST(MpiComm, MakeCommunicatorForCpu) {
  auto auto_comm = make_communicator(CommKind::Auto, Device::Cpu, session(), 0, 10.0);
  EXPECT_EQ(auto_comm->name(), "mpi");
  EXPECT_EQ(auto_comm->size(), session().size());
  EXPECT_EQ(auto_comm->rank(), session().rank());
  EXPECT_EQ(auto_comm->all_reduce_scalar(1.0, ReduceOp::Sum), static_cast<double>(session().size()));
  EXPECT_EQ(make_communicator(CommKind::Mpi, Device::Cpu, session(), 0, 10.0)->name(), "mpi");
  EXPECT_THROW(make_communicator(CommKind::Nccl, Device::Cpu, session(), 0, 10.0), InputError);
}

TEST(MpiComm, BroadcastBytesFromEveryRoot) {
  MpiCommunicator comm(session());
  for (int root = 0; root < comm.size(); ++root)
    for (size_t length : {size_t{0}, size_t{1}, size_t{100000}}) {
      std::string bytes(comm.rank() == root ? length : 7 + comm.rank(), 'x');  // other ranks: wrong sizes
      if (comm.rank() == root)
        for (size_t i = 0; i < length; ++i) bytes[i] = static_cast<char>((i * 31 + root) % 256);
      comm.broadcast_bytes(bytes, root);
      size_t wrong = bytes.size() == length ? 0 : 1;
      for (size_t i = 0; i < bytes.size() && i < length; ++i)
        wrong += bytes[i] != static_cast<char>((i * 31 + root) % 256);
      EXPECT_EQ(wrong, 0u) << "root " << root << ", " << length << " bytes";
    }
  std::string one;
  EXPECT_THROW(comm.broadcast_bytes(one, comm.size()), std::invalid_argument);
}

// The same plan on every rank (train/plan_sharing.h): only rank 0 runs the planner, and every rank
// ends with exactly its choices, though the fake planner would answer differently on each rank and
// every rank starts with a different book of its own.
TEST(MpiPlanSharing, EveryRankEndsWithRankZerosChoices) {
  MpiCommunicator comm(session());
  const int rank = comm.rank();
  PlanBook book;
  book.put("left-over;rank=" + std::to_string(rank), {"direct", 0, 0});
  book.forget_use();  // as read from a cache file: held, not used
  int planner_runs = 0;
  share_plans(comm, book, [&](PlanBook& b) {
    ++planner_runs;
    b.put("conv1;n=64;direction=forward", {"cudnn", 1 + rank, 0});  // "timed": differs by rank
    b.put("conv2;n=64;direction=backward-filter", {rank == 0 ? "tiled" : "mma", 0, 0});
    b.put("conv2;n=16;direction=backward-filter", {"cudnn", 0, 8 + rank});
  });
  EXPECT_EQ(planner_runs, rank == 0 ? 1 : 0);
  EXPECT_EQ(comm.all_reduce_scalar(planner_runs, ReduceOp::Sum), 1.0) << "the planner ran on one rank only";
  if (rank != 0) {
    EXPECT_TRUE(book.fixed);
    EXPECT_EQ(book.source, "rank 0's plan");
  }
  PlanBook expected;
  expected.put("conv1;n=64;direction=forward", {"cudnn", 1, 0});
  expected.put("conv2;n=64;direction=backward-filter", {"tiled", 0, 0});
  expected.put("conv2;n=16;direction=backward-filter", {"cudnn", 0, 8});
  if (rank == 0) expected.put("left-over;rank=0", {"direct", 0, 0});  // rank 0 keeps its own book
  EXPECT_EQ(book, expected) << book.serialize();
  // What the others hold is what rank 0 used (not its unused records), byte for byte.
  const std::string mine = rank == 0 ? book.used().serialize() : book.serialize();
  std::string root = mine;
  comm.broadcast_bytes(root, 0);
  EXPECT_TRUE(all_agree(root == mine));
  EXPECT_EQ(root.find("left-over"), std::string::npos);
}

TEST(MpiPlanSharing, RankZerosFailureReachesEveryRank) {
  MpiCommunicator comm(session());
  PlanBook book;
  bool threw = false;
  try {
    share_plans(comm, book, [&](PlanBook&) { throw InputError("train.plan_cache", "planted failure"); });
  } catch (const InputError& e) {
    threw = comm.rank() == 0 && std::string(e.what()).find("planted failure") != std::string::npos;
  } catch (const std::runtime_error& e) {
    threw = comm.rank() != 0 && std::string(e.what()).find("rank 0 failed to plan: ") != std::string::npos &&
            std::string(e.what()).find("planted failure") != std::string::npos;
  }
  EXPECT_TRUE(threw);
  comm.barrier();  // nobody is left inside the broadcast
}

// Run without mpirun (CTest's mpi_comm_singleton): MPI starts as a world of one.
TEST(MpiSingleton, MakeCommunicatorForOneRank) {
  if (!all_agree(session().size() == 1)) GTEST_SKIP() << "only for a world of one rank";
  EXPECT_EQ(session().rank(), 0);
  EXPECT_EQ(session().local_rank(), 0);
  EXPECT_EQ(session().local_size(), 1);
  EXPECT_EQ(make_communicator(CommKind::Auto, Device::Cpu, session(), 0, 10.0)->name(), "single");
  auto mpi = make_communicator(CommKind::Mpi, Device::Cpu, session(), 0, 10.0);  // asked for: honoured
  EXPECT_EQ(mpi->name(), "mpi");
  std::vector<float> data = {1.5f, -2.0f, 3.25f};
  mpi->all_reduce_sum(data, nullptr);
  mpi->broadcast(data, 0, nullptr);
  EXPECT_EQ(data, (std::vector<float>{1.5f, -2.0f, 3.25f}));
  EXPECT_EQ(mpi->all_reduce_scalar(2.5, ReduceOp::Sum), 2.5);
  mpi->barrier();
  EXPECT_THROW(make_communicator(CommKind::Nccl, Device::Cpu, session(), 0, 10.0), InputError);
}

// Sum over ranks of rank r's gradient element i, where rank r holds (r + 1) * exact_value(i) + r.
float expected_gradient(size_t i, int p) {
  return static_cast<float>(p * (p + 1) / 2) * exact_value(i) + static_cast<float>(p * (p - 1) / 2);
}

TEST(MpiComm, GradientReducerSumsEveryBucket) {
  DeviceContext ctx;  // CPU
  MpiCommunicator comm(session());
  const int p = comm.size();
  const size_t n = 10000;
  // Layer-like slices (unaligned), reported last first, as backward does.
  const std::vector<size_t> cuts = {0, 150, 1234, 1300, 5000, 5001, 9000, 10000};
  for (bool overlap : {true, false}) {
    std::vector<float> grads(n);
    GradientReducer reducer(comm, ctx, grads, {0.001, overlap});  // 256-float buckets
    EXPECT_EQ(reducer.bucket_count(), 40u);  // [9792, 10000), then 39 buckets of <= 256 down to 0
    for (int step = 0; step < 2; ++step) {
      for (size_t i = 0; i < n; ++i)
        grads[i] = static_cast<float>(comm.rank() + 1) * exact_value(i) + static_cast<float>(comm.rank());
      for (size_t k = cuts.size() - 1; k > 0; --k) reducer.on_gradients_ready(ctx, cuts[k - 1], cuts[k]);
      EXPECT_EQ(reducer.launched(), overlap ? reducer.bucket_count() : 0u);
      reducer.on_backward_done(ctx);
      size_t wrong = 0;
      for (size_t i = 0; i < n; ++i) wrong += grads[i] != expected_gradient(i, p);
      EXPECT_EQ(wrong, 0u) << "overlap " << overlap << " step " << step;
      EXPECT_TRUE(identical_across_ranks(grads));
    }
  }
}

// ---- BatchNorm across ranks (issue 23): every rank's running statistics are the same bits, and
// within 1e-6 of one process normalising the whole global batch; outputs, input gradients and the
// summed parameter gradients likewise. Ghost groups and sync; with and without an idle last rank.

/// The layers' cross-rank sum (layers/cross_rank_sum.h) over the MPI communicator, as the trainer's.
class MpiRankSum final : public CrossRankSum {
 public:
  explicit MpiRankSum(Communicator& comm) : comm_(comm) {}
  int ranks() const override { return comm_.size(); }
  void sum(DeviceContext&, std::span<float> data) override { comm_.all_reduce_sum(data, nullptr); }

 private:
  Communicator& comm_;
};

struct BnResult {
  std::vector<float> out, din, dw, db, mean, var;
  float tracked = 0;
};

/// Samples [first, first + n) of the global batch through a batchnorm2d (3 channels, 2x2), one
/// train step; n = 0: an idle rank. `sum` null: one process.
BnResult batchnorm_step(int sync, int first, int n, CrossRankSum* sum) {
  LayerConfig c;
  c.type = "batchnorm2d";
  c.name = "bn";
  c.group_size = 4;
  c.sync = sync;
  const Dims in{3, 2, 2};
  auto layer = make_layer<float>(c, 0, in, Device::Cpu);
  BnResult r;
  std::vector<float> w{1.5f, 0.5f, -1.0f}, b{0.1f, 0.2f, 0.3f};
  r.dw.assign(3, 0), r.db.assign(3, 0), r.mean.assign(3, 0), r.var.assign(3, 1);
  std::vector<float> tracked{0};
  layer->bind({{w, r.dw}, {b, r.db}});
  layer->bind_state({r.mean, r.var, tracked});
  layer->set_cross_rank_sum(sum);
  DeviceContext ctx;
  layer->reserve(ctx, 64);
  const size_t per = 12;
  std::vector<float> x(static_cast<size_t>(n) * per), dy(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const size_t g = static_cast<size_t>(first) * per + i;  // the global element
    x[i] = std::sin(0.37f * static_cast<float>(g)) * 2.0f + static_cast<float>(g % 5) * 0.3f;
    dy[i] = std::cos(0.11f * static_cast<float>(g)) * 0.01f;
  }
  r.out.resize(x.size()), r.din.resize(x.size());
  if (n > 0) {
    layer->forward(ctx, TensorView<const float>{x.data(), n, in}, TensorView<float>{r.out.data(), n, in}, Phase::Train, {});
    layer->backward(ctx, TensorView<const float>{x.data(), n, in}, TensorView<const float>{r.out.data(), n, in},
                    TensorView<const float>{dy.data(), n, in}, TensorView<float>{r.din.data(), n, in});
  } else {
    layer->idle_pass(ctx, true);
    layer->idle_pass(ctx, false);
  }
  layer->end_train_step(ctx);
  r.tracked = tracked[0];
  return r;
}

double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0, scale = 1e-6;
  for (float v : b) scale = std::max(scale, static_cast<double>(std::fabs(v)));
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(double(a[i]) - b[i]) / scale);
  return worst;
}

TEST(MpiComm, BatchNormStatisticsDoNotDependOnTheRankCount) {
  MpiCommunicator comm(session());
  MpiRankSum sum(comm);
  const int p = comm.size(), r = comm.rank();
  for (int sync : {0, 1})
    for (bool idle_last : {false, true}) {
      const int active = idle_last ? p - 1 : p;
      const int per_rank = 8;  // two ghost groups of 4
      const bool idle = r >= active;
      const BnResult mine = batchnorm_step(sync, r * per_rank, idle ? 0 : per_rank, &sum);
      const BnResult one = batchnorm_step(sync, 0, active * per_rank, nullptr);
      const std::string what = std::string(sync ? "sync" : "ghost") + (idle_last ? ", last rank idle" : "");
      EXPECT_TRUE(identical_across_ranks(mine.mean)) << what;
      EXPECT_TRUE(identical_across_ranks(mine.var)) << what;
      EXPECT_LT(max_rel(mine.mean, one.mean), 1e-6) << what;
      EXPECT_LT(max_rel(mine.var, one.var), 1e-6) << what;
      EXPECT_EQ(mine.tracked, 1.0f);
      if (!idle) {
        const size_t at = static_cast<size_t>(r) * per_rank * 12, count = static_cast<size_t>(per_rank) * 12;
        const std::vector<float> out(one.out.begin() + at, one.out.begin() + at + count);
        const std::vector<float> din(one.din.begin() + at, one.din.begin() + at + count);
        EXPECT_LT(max_rel(mine.out, out), 1e-6) << what;
        EXPECT_LT(max_rel(mine.din, din), 1e-5) << what;
      }
      std::vector<float> dw = mine.dw, db = mine.db;  // this rank's: the gradient exchange sums them
      comm.all_reduce_sum(dw, nullptr);
      comm.all_reduce_sum(db, nullptr);
      EXPECT_LT(max_rel(dw, one.dw), 1e-5) << what;
      EXPECT_LT(max_rel(db, one.db), 1e-5) << what;
    }
}

// ---- GPU ranks (skipped, by all ranks alike, where the host has no usable GPU; not built in a
// CPU-only build) ----
#if DPTRAIN_HAVE_CUDA

int visible_gpus() { return cuda_device_count(); }

// Buffer::copy_from_host is a cudaMemcpy from pageable memory, which may return before the DMA has
// landed; the collectives run on non-blocking streams that do not order after it. Wait for it.
void upload(Buffer<float>& dev, const std::vector<float>& host) {
  dev.copy_from_host(host);
  CUDA_CHECK(cudaDeviceSynchronize());
}

TEST(MpiCommGpu, MpiStagesDeviceSpans) {
  if (!all_agree(visible_gpus() > 0)) GTEST_SKIP() << "no GPU";
  const int device = choose_gpu(session().local_rank(), visible_gpus());
  CUDA_CHECK(cudaSetDevice(device));
  auto comm = make_communicator(CommKind::Mpi, Device::Cuda, session(), device, 10.0);
  EXPECT_EQ(comm->name(), "mpi");
  const int p = comm->size();
  const size_t n = 70000;
  std::vector<float> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<float>(comm->rank() + 1) * exact_value(i);
  Buffer<float> dev(Device::Cuda, n);
  upload(dev, host);
  CudaStream stream = make_stream();
  comm->all_reduce_sum(dev.span(), stream);
  comm->synchronize(stream);
  dev.copy_to_host(host);
  size_t wrong = 0;
  for (size_t i = 0; i < n; ++i) wrong += host[i] != static_cast<float>(p * (p + 1) / 2) * exact_value(i);
  EXPECT_EQ(wrong, 0u);
  // Host spans still work on a CUDA-side MPI communicator.
  std::vector<float> small = {static_cast<float>(comm->rank())};
  comm->all_reduce_sum(small, stream);
  EXPECT_EQ(small[0], static_cast<float>(p * (p - 1) / 2));
}

TEST(MpiCommGpu, SharedGpuRefusedBeforeNccl) {
  const int visible = visible_gpus();
  if (!all_agree(visible > 0 && session().local_size() > visible))
    GTEST_SKIP() << "needs a GPU and more ranks on this host than GPUs";
  const int device = choose_gpu(session().local_rank(), visible);
  for (CommKind kind : {CommKind::Auto, CommKind::Nccl}) {
    try {
      make_communicator(kind, Device::Cuda, session(), device, 10.0);
      ADD_FAILURE() << "no error for " << session().local_size() << " ranks on " << visible << " GPUs";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("ranks on host " + session().hostname() + " but only"), std::string::npos)
          << e.what();
    }
  }
  EXPECT_EQ(make_communicator(CommKind::Mpi, Device::Cuda, session(), device, 10.0)->name(), "mpi");
}

TEST(MpiCommGpu, NcclAllReduceBroadcastAndReducerInAGraph) {
  const int visible = visible_gpus();
  if (!all_agree(visible > 0 && session().local_size() <= visible)) GTEST_SKIP() << "needs one GPU per rank";
  const int device = choose_gpu(session().local_rank(), visible);
  DeviceContext ctx(std::make_unique<CudaContext>(CudaOptions{device}));
  // NCCL by name: auto gives one rank the single-process communicator, and a one-GPU machine runs
  // this test with one rank only.
  auto comm = make_communicator(CommKind::Nccl, Device::Cuda, session(), device, 60.0);
  ASSERT_EQ(comm->name(), "nccl");  // make_communicator is collective: every rank got here alike
  const int p = comm->size();
  cudaStream_t stream = ctx.cuda().stream();

  const size_t n = 300000;
  std::vector<float> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<float>(comm->rank() + 1) * exact_value(i);
  Buffer<float> dev(Device::Cuda, n);
  upload(dev, host);
  comm->all_reduce_sum(dev.span(), stream);
  comm->synchronize(stream);
  dev.copy_to_host(host);
  size_t wrong = 0;
  for (size_t i = 0; i < n; ++i) wrong += host[i] != static_cast<float>(p * (p + 1) / 2) * exact_value(i);
  EXPECT_EQ(wrong, 0u);
  EXPECT_TRUE(identical_across_ranks(host));

  for (size_t i = 0; i < n; ++i) host[i] = comm->rank() == p - 1 ? exact_value(i) : -7.0f;
  upload(dev, host);
  comm->broadcast(dev.span(), p - 1, stream);
  comm->synchronize(stream);
  dev.copy_to_host(host);
  wrong = 0;
  for (size_t i = 0; i < n; ++i) wrong += host[i] != exact_value(i);
  EXPECT_EQ(wrong, 0u);
  EXPECT_EQ(comm->all_reduce_scalar(1.0, ReduceOp::Sum), static_cast<double>(p));

  // The reducer, captured once in a CUDA graph and replayed: each replay sums over ranks again.
  // Start from 1 everywhere: after k replays every element is p^k, exactly.
  std::vector<float> ones(n, 1.0f);
  upload(dev, ones);
  GradientReducer reducer(*comm, ctx, dev.span(), {0.25, true});  // 65536-float buckets
  EXPECT_EQ(reducer.bucket_count(), 5u);
  CudaGraph graph;
  CudaGraphExec exec;
  {
    cudaGraph_t g = nullptr;
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    reducer.on_gradients_ready(ctx, 200000, n);
    reducer.on_gradients_ready(ctx, 0, 200000);
    reducer.on_backward_done(ctx);
    CUDA_CHECK(cudaStreamEndCapture(stream, &g));
    graph = CudaGraph(g);
    cudaGraphExec_t e = nullptr;
    CUDA_CHECK(cudaGraphInstantiate(&e, graph, 0));
    exec = CudaGraphExec(e);
  }
  for (int k = 1; k <= 3; ++k) {
    CUDA_CHECK(cudaGraphLaunch(exec, stream));
    comm->synchronize(stream);
    dev.copy_to_host(host);
    const float expected = std::pow(static_cast<float>(p), static_cast<float>(k));
    wrong = 0;
    for (size_t i = 0; i < n; ++i) wrong += host[i] != expected;
    EXPECT_EQ(wrong, 0u) << "after replay " << k;
  }
  comm->barrier();
}
// The same plan on every rank with real convolution planners, ranks sharing GPUs through --comm mpi
// (train/plan_sharing.h): rank 0 times its choices (for its batch sizes and another rank's) and
// writes them to the run folder; every other rank runs exactly those, each checked, none timed.
TEST(MpiCommGpu, EveryRankRunsRankZerosConvPlan) {
  if (!all_agree(visible_gpus() > 0)) GTEST_SKIP() << "no GPU";
  const int device = choose_gpu(session().local_rank(), visible_gpus());
  CUDA_CHECK(cudaSetDevice(device));
  auto comm = make_communicator(CommKind::Mpi, Device::Cuda, session(), device, 10.0);
  DeviceContext ctx = make_device_context(Device::Cuda, TrainConfig{}, device);
  LayerConfig c;
  c.type = c.name = "conv2d";
  c.out_channels = 64;
  c.kernel = 3;
  c.stride = 1;
  auto conv = make_layer<float>(c, 1, Dims{32, 26, 26}, Device::Cuda);
  size_t np = 0;
  for (const ParamSpec& s : conv->param_specs()) np += static_cast<size_t>(element_count(s.shape));
  Buffer<float> values(Device::Cuda, np), grads(Device::Cuda, np);
  CUDA_CHECK(cudaMemset(values.data(), 0, np * sizeof(float)));
  conv->bind({{values.span().subspan(0, np - 64), grads.span().subspan(0, np - 64)},
              {values.span().subspan(np - 64), grads.span().subspan(np - 64)}});
  conv->reserve(ctx, 64);
  const std::string run_dir = "/tmp/dptrain-mpi-plan-" + std::to_string(session().size());
  if (comm->rank() == 0) std::filesystem::remove_all(run_dir);
  comm->barrier();
  plan_on_every_rank(*comm, ctx, {"off", run_dir, false}, [&](bool root) {
    conv->plan(ctx, 64, true);
    if (root) conv->plan(ctx, 32, true);  // another rank's last shard, say
  });
  const std::vector<std::string>& lines = ctx.cuda().choices();
  size_t recorded = 0;
  for (const std::string& l : lines) recorded += l.find("(recorded plan, checked)") != std::string::npos;
  if (comm->rank() == 0) {
    EXPECT_EQ(recorded, 0u);  // timed here
    EXPECT_TRUE(std::filesystem::exists(run_plan_path(run_dir)));  // rank 0 writes the run's plan
  } else {
    EXPECT_EQ(lines.size(), 3u);  // forward, backward-data, backward-filter at 64; no pair timing
    EXPECT_EQ(recorded, lines.size());
    EXPECT_TRUE(ctx.cuda().warnings().empty());
  }
  comm->barrier();
}

#endif  // DPTRAIN_HAVE_CUDA

}  // namespace
}  // namespace dptrain

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  int status = 0;
  {
    dptrain::MpiSession session(&argc, &argv);
    dptrain::g_session = &session;
    status = RUN_ALL_TESTS();
    // One verdict for the job: a failure on any rank fails every rank (and mpirun).
    MPI_Allreduce(MPI_IN_PLACE, &status, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    dptrain::g_session = nullptr;
  }
  return status;
}
