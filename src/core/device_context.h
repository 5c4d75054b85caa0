// DeviceContext: everything a layer, loss or optimizer needs to run on this rank's device.
// On the CPU it is empty; on CUDA it owns (through CudaContext, core/cuda_context.h) the rank's
// compute stream, cuDNN and cuBLAS handles and the shared workspace: one per rank, never per layer.
#pragma once

#include <memory>

#include "core/device.h"
#include "core/step_state.h"

namespace dptrain {

class CudaContext;
class PlanBook;  // io/plan_cache.h: the planners' choices, read and written through this context

class DeviceContext {
 public:
  /// A context for the CPU reference backend.
  DeviceContext();
  /// A context for CUDA; takes ownership of the rank's CUDA resources.
  explicit DeviceContext(std::unique_ptr<CudaContext> cuda);
  ~DeviceContext();
  DeviceContext(DeviceContext&&) noexcept;
  DeviceContext& operator=(DeviceContext&&) noexcept;

  Device device() const { return device_; }
  bool on_cuda() const { return device_ == Device::Cuda; }
  /// The CUDA resources; throws std::logic_error on a CPU context.
  CudaContext& cuda() const;

  /// Orders the compute stream after the work layers queued on the CUDA side stream (parameter
  /// gradients, see core/cuda_context.h); nothing on the CPU. Call before reading gradients.
  void join_side_work();

  /// Writes this step's state into the context's memory: directly on the CPU, by a kernel queued
  /// on the compute stream on CUDA (so it stays ordered with, and outside of, a replayed graph).
  void set_step(const StepState& state);
  /// The state as kernels read it: a host pointer on the CPU, a device pointer on CUDA.
  const StepState* step() const;

  /// The book planners consult and record their choices in (io/plan_cache.h), or null: plan
  /// afresh and record nothing. Not owned; whoever sets it clears it before the book goes away.
  PlanBook* plan_book() const { return plan_book_; }
  void set_plan_book(PlanBook* book) { plan_book_ = book; }

 private:
  Device device_ = Device::Cpu;
  std::unique_ptr<CudaContext> cuda_;
  StepState host_step_;
  PlanBook* plan_book_ = nullptr;
};

}  // namespace dptrain
