// CudaContext: one rank's CUDA resources, created once: the compute stream, the cuDNN and cuBLAS
// handles bound to it, and one workspace shared by every layer (layers run one at a time on the
// stream, so they can share it).
//
// A second, "side" stream with its own handles and workspace takes the parameter gradients of
// layers that also pass a gradient on: nothing later in backward reads them, so they overlap the
// chain of input gradients that the rest of backward waits for (at batch 64 that chain is short
// kernels that leave most of the GPU idle). fork() starts side work after what the compute stream
// has queued; join() (DeviceContext::join_side_work) brings it back before anyone reads a gradient.
// A third, "update" stream takes parameter updates queued during backward (train/
// update_in_backward.h). It has the lowest priority, the compute stream the highest and the side
// stream the one below, so that where several have blocks waiting the input-gradient chain goes
// first (mnist_cnn tf32 at batch 257: cuDNN's 3 us layout transform at the head of conv2's input
// gradient took 181 us beside the side stream's filter gradient and fc1's update, a pass over 1.2M
// parameters), then the parameter gradients; a captured step keeps these priorities (StepGraph
// instantiates with node priorities).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/buffer.h"
#include "core/step_state.h"
#include "core/cuda_raii.h"

namespace dptrain {

struct CudaOptions {
  int device = 0;              ///< CUDA ordinal this rank drives
  bool tf32 = false;           ///< allow TF32 tensor-core math in cuDNN and cuBLAS
  bool cudnn_benchmark = true; ///< pick conv algorithms by measurement (else heuristics)
  bool deterministic = true;   ///< only algorithms that repeat bit for bit
  bool exact_convolutions = false;  ///< no FFT/Winograd convolution algorithms (see conv2d_cuda.cpp)
  bool fuse_elementwise = true;  ///< ReLUs and dropouts run inside the convolution, linear or pooling
                                ///< kernels before them (off under --check-numerics, so every layer's
                                ///< own output is checked)
};

class CudaContext {
 public:
  explicit CudaContext(const CudaOptions& options);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  int device() const { return options_.device; }
  const CudaOptions& options() const { return options_; }
  const std::string& device_name() const { return device_name_; }
  cudaStream_t stream() const { return main_.stream; }
  cudnnHandle_t cudnn() const { return main_.cudnn; }
  cublasHandle_t cublas() const { return main_.cublas; }
  /// cuBLASLt (the linear layers' GEMMs with a bias epilogue, on the compute stream), with the
  /// compute stream's cuBLAS workspace: work queued on that stream never overlaps itself.
  cublasLtHandle_t cublaslt() const { return cublaslt_; }
  void* cublas_workspace() { return main_.cublas_workspace.data(); }
  size_t cublas_workspace_size() const { return main_.cublas_workspace.size(); }

  /// The side stream and the handles bound to it.
  cudaStream_t side_stream() const { return side_.stream; }
  cudnnHandle_t side_cudnn() const { return side_.cudnn; }
  cublasHandle_t side_cublas() const { return side_.cublas; }
  /// Orders the side stream after everything queued so far on the compute stream; returns it.
  cudaStream_t fork();
  /// Orders the update stream after everything queued so far on the other two; returns it.
  cudaStream_t queue_update();
  /// Orders the compute stream after everything queued so far on the side and update streams.
  void join();
  /// Orders `other` after everything queued so far on both streams (a communication stream).
  void order_after_queued(cudaStream_t other);

  /// Queues a write of `state` into the device-resident StepState (see core/step_state.h).
  void set_step(const StepState& state);
  const StepState* step() const { return reinterpret_cast<const StepState*>(step_state_.data()); }

  /// The shared workspace, grown to at least `bytes`. Call only while setting up (it may allocate).
  void* workspace(size_t bytes);
  size_t workspace_size() const { return main_.workspace.size(); }
  /// The side stream's workspace, likewise.
  void* side_workspace(size_t bytes);
  /// Counts the workspace reallocations so far. A captured graph holds the workspace pointers it
  /// was captured with: after a reallocation (a batch size planned late) it must be captured again.
  uint64_t workspace_generation() const { return workspace_generation_; }

  /// What layers chose by measurement while setting up (e.g. each convolution's algorithms with
  /// their times), one line each, for `dptrain bench` to report.
  void note_choice(std::string line) { choices_.push_back(std::move(line)); }
  const std::vector<std::string>& choices() const { return choices_; }
  /// A problem met while setting up that the run survives (a convolution algorithm dropped by the
  /// planner's check): printed on stderr as one "dptrain: warning:" line, and kept.
  void warn(const std::string& line);
  const std::vector<std::string>& warnings() const { return warnings_; }

  /// What creating this context took, for the start-up breakdown (train/startup_timer.h): the CUDA
  /// context itself (cudaSetDevice and a first runtime call, which create it), then the rest: the
  /// streams, the cuDNN and cuBLAS handles and their workspaces, the device's properties.
  double context_seconds() const { return std::chrono::duration<double>(device_ready_ - began_).count(); }
  double handles_seconds() const { return std::chrono::duration<double>(built_ - device_ready_).count(); }

 private:
  /// A stream with its cuDNN and cuBLAS handles and their workspaces.
  struct Lane {
    CudaStream stream;
    CudnnHandle cudnn;
    CublasHandle cublas;
    Buffer<uint8_t> workspace;          // for cuDNN and dptrain's kernels, grown while setting up
    Buffer<uint8_t> cublas_workspace;   // given to cuBLAS so it never allocates inside a captured graph
    Lane(bool tf32, int priority);
  };
  void* grow(Lane& lane, size_t bytes);

  // Before options_: member initialisers run in declaration order, and these time them.
  std::chrono::steady_clock::time_point began_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point device_ready_;
  std::chrono::steady_clock::time_point built_;
  CudaOptions options_;
  std::string device_name_;
  Lane main_;
  Lane side_;
  CublasLtHandle cublaslt_;
  CudaStream update_;
  CudaEvent forked_, joined_, updated_;
  bool side_forked_ = false;     // since the last join
  bool updates_queued_ = false;  // since the last join
  Buffer<uint8_t> step_state_;  // one StepState
  std::vector<std::string> choices_;
  std::vector<std::string> warnings_;
  uint64_t workspace_generation_ = 0;
};

/// Number of usable CUDA devices; 0 (never an exception) when there is no driver or no GPU.
int cuda_device_count();

}  // namespace dptrain
