#include "train/plan_sharing.h"

#include <filesystem>
#include <optional>
#include <stdexcept>

#include "comm/communicator.h"
#include "core/build_id.h"
#include "core/cuda_support.h"
#include "core/device_context.h"
#include "core/error.h"
#if DPTRAIN_HAVE_CUDA
#include <cublas_v2.h>
#include <cudnn.h>

#include "core/cuda_check.h"
#include "core/cuda_context.h"
#endif

namespace dptrain {

namespace {

// The broadcast message: a tag line, then rank 0's records (PlanBook::serialize) or its error.
constexpr const char* kOk = "ok\n";
constexpr const char* kFailed = "failed\n";

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

/// Whether two paths name one file (the run's plans.json given as train.plan_cache).
bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  return std::filesystem::equivalent(a, b, ec) && !ec;
}

#if DPTRAIN_HAVE_CUDA
PlanFingerprint fingerprint(DeviceContext& ctx) {
  // Attributes one by one: cudaGetDeviceProperties queries them all (milliseconds, at start-up).
  CudaContext& cu = ctx.cuda();
  PlanFingerprint f;
  f.gpu = cu.device_name();
  CUDA_CHECK(cudaDeviceGetAttribute(&f.cc_major, cudaDevAttrComputeCapabilityMajor, cu.device()));
  CUDA_CHECK(cudaDeviceGetAttribute(&f.cc_minor, cudaDevAttrComputeCapabilityMinor, cu.device()));
  CUDA_CHECK(cudaDeviceGetAttribute(&f.sms, cudaDevAttrMultiProcessorCount, cu.device()));
  CUDA_CHECK(cudaDriverGetVersion(&f.driver));
  CUDA_CHECK(cudaRuntimeGetVersion(&f.runtime));
  f.cudnn = static_cast<int>(cudnnGetVersion());
  CUBLAS_CHECK(cublasGetVersion(cu.cublas(), &f.cublas));
  f.build = build_id();
  return f;
}
#endif

}  // namespace

void share_plans(Communicator& comm, PlanBook& book, const std::function<void(PlanBook&)>& plan_on_root) {
  std::string message;
  std::exception_ptr failure;
  if (comm.rank() == 0) {
    try {
      plan_on_root(book);
      message = kOk + book.used().serialize();
    } catch (const std::exception& e) {
      failure = std::current_exception();
      message = kFailed + std::string(e.what());
    } catch (...) {
      failure = std::current_exception();
      message = kFailed + std::string("unknown error");
    }
  }
  comm.broadcast_bytes(message, 0);
  if (failure) std::rethrow_exception(failure);
  if (comm.rank() == 0) return;
  if (starts_with(message, kFailed))
    throw std::runtime_error("rank 0 failed to plan: " + message.substr(std::string(kFailed).size()));
  if (!starts_with(message, kOk)) throw std::runtime_error("rank 0's plan arrived garbled");
  book = PlanBook::parse(message.substr(std::string(kOk).size()));
  book.fixed = true;
  book.source = "rank 0's plan";
}

void plan_with_cache(const PlanningOptions& options, const PlanFingerprint& fp,
                     const std::function<void(const std::string&)>& warn, const std::function<void(PlanBook&)>& plan,
                     PlanBook& book) {
  const PlanCacheLocation cache = resolve_plan_cache(options.plan_cache);
  if (!cache.path.empty()) {
    if (!cache.writable && !std::filesystem::exists(cache.path))
      throw InputError("train.plan_cache",
                       cache.path + " does not exist (give the plans.json of an earlier run, or auto, or off)");
    PlanFileRead read = read_plan_file(cache.path, fp);
    if (read.warning) warn(*read.warning);
    book = std::move(read.book);
    book.fixed = !cache.writable;
    book.source = cache.path;
  }
  // Resuming with the shared cache: the run's own plan comes first, so the continuation runs what
  // the interrupted run ran even if the shared cache changed since (another run re-timed a shape).
  const std::string run_plan = options.run_dir.empty() ? std::string() : run_plan_path(options.run_dir);
  if (options.resume && cache.writable && !run_plan.empty()) {
    PlanFileRead own = read_plan_file(run_plan, fp);
    if (own.warning) warn(*own.warning);
    book.merge(own.book, /*override=*/true);
  }
  const std::map<std::string, PlanRecord> before = book.records();
  plan(book);

  const PlanBook used = book.used();
  if (!run_plan.empty() && !(!cache.writable && same_file(run_plan, cache.path))) {  // a PATH is never written
    std::filesystem::create_directories(options.run_dir);
    write_plan_file(run_plan, used, fp);
  }
  bool changed = false;
  for (const auto& [key, record] : used.records()) {
    const auto it = before.find(key);
    changed = changed || it == before.end() || !(it->second == record);
  }
  if (cache.writable && changed) {
    try {
      merge_into_plan_file(cache.path, used, fp);
    } catch (const std::exception& e) {  // the run has its plan; only the next run's start is slower
      warn(std::string("plan cache not written: ") + e.what());
    }
  }
}

std::string run_plan_path(const std::string& run_dir) {
  return (std::filesystem::path(run_dir) / "plans.json").string();
}

void plan_on_every_rank(Communicator& comm, DeviceContext& ctx, const PlanningOptions& options,
                        const std::function<void(bool root)>& plan) {
#if DPTRAIN_HAVE_CUDA
  if (ctx.on_cuda()) {
    PlanBook book;
    share_plans(comm, book, [&](PlanBook& b) {
      plan_with_cache(
          options, fingerprint(ctx), [&](const std::string& line) { ctx.cuda().warn(line); },
          [&](PlanBook& planning) {
            ctx.set_plan_book(&planning);
            try {
              plan(true);
            } catch (...) {
              ctx.set_plan_book(nullptr);
              throw;
            }
            ctx.set_plan_book(nullptr);
          },
          b);
    });
    if (comm.rank() != 0) {
      ctx.set_plan_book(&book);
      try {
        plan(false);
      } catch (...) {
        ctx.set_plan_book(nullptr);
        throw;
      }
      ctx.set_plan_book(nullptr);
    }
    return;
  }
#endif
  // The CPU backend chooses nothing by measurement: every rank runs the same code already.
  (void)ctx;
  (void)options;
  plan(comm.rank() == 0);
}

}  // namespace dptrain
