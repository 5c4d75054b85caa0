// CudaContext: one rank's CUDA resources, created once: the compute stream, the cuDNN and cuBLAS
// handles bound to it, and one workspace shared by every layer (layers run one at a time on the
// stream, so they can share it).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "core/buffer.h"
#include "core/step_state.h"
#include "cuda/raii.h"

namespace dptrain {

struct CudaOptions {
  int device = 0;              ///< CUDA ordinal this rank drives
  bool tf32 = false;           ///< allow TF32 tensor-core math in cuDNN and cuBLAS
  bool cudnn_benchmark = true; ///< pick conv algorithms by measurement (else heuristics)
  bool deterministic = true;   ///< only algorithms that repeat bit for bit
  bool exact_convolutions = false;  ///< no FFT/Winograd convolution algorithms (see conv2d_cuda.cpp)
  bool fuse_relu = true;       ///< convolutions and linear layers apply the ReLU after them (off under
                               ///< --check-numerics, so every layer's own output is checked)
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
  cudaStream_t stream() const { return stream_; }
  cudnnHandle_t cudnn() const { return cudnn_; }
  cublasHandle_t cublas() const { return cublas_; }

  /// Queues a write of `state` into the device-resident StepState (see core/step_state.h).
  void set_step(const StepState& state);
  const StepState* step() const { return reinterpret_cast<const StepState*>(step_state_.data()); }

  /// The shared workspace, grown to at least `bytes`. Call only while setting up (it may allocate).
  void* workspace(size_t bytes);
  size_t workspace_size() const { return workspace_.size(); }

  /// What layers chose by measurement while setting up (e.g. each convolution's algorithms with
  /// their times), one line each, for `dptrain bench` to report.
  void note_choice(std::string line) { choices_.push_back(std::move(line)); }
  const std::vector<std::string>& choices() const { return choices_; }

 private:
  CudaOptions options_;
  std::string device_name_;
  CudaStream stream_;
  CudnnHandle cudnn_;
  CublasHandle cublas_;
  Buffer<uint8_t> workspace_;
  Buffer<uint8_t> step_state_;  // one StepState
  Buffer<uint8_t> cublas_workspace_;  // given to cuBLAS so it never allocates inside a captured graph
  std::vector<std::string> choices_;
};

/// Number of usable CUDA devices; 0 (never an exception) when there is no driver or no GPU.
int cuda_device_count();

}  // namespace dptrain
