// ConvExecutor: how each implementation computes one direction of one convolution layer, with the
// epilogues the layer absorbed: cuDNN's algorithms (over the whole batch, or over equal sub-batches
// where nothing serves the whole), dptrain's direct kernels (short reductions: forward and filter
// gradient), its 3x3 kernels (register-tiled FMA and tensor-core ones, all three directions) and its
// kernels for convolutions whose samples fit in shared memory (kernels/conv_small.h, all three).
// The layer's step and the planner's checks and timings run the same calls (ConvPlanner), so what
// is timed and checked is what runs; the reference kernels (checks only) run through it too. It
// holds the layer's cuDNN filter and convolution descriptors. Nothing here allocates or synchronizes.
#pragma once

#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <cstddef>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "core/cuda_raii.h"
#include "kernels/conv_kernels.h"
#include "kernels/conv_mma.h"

namespace dptrain {

/// Workspace beyond which a cuDNN algorithm, or the direct filter gradient, is not eligible.
constexpr size_t kMaxConvWorkspace = size_t{256} << 20;

/// Who computes one direction of a convolution. Reference (kernels/conv_reference.h) is the
/// planner's yardstick for the others, never a candidate.
enum class ConvImpl { Cudnn, Direct, Tiled, Mma, Small, Reference };
enum class ConvDirection { Forward, Data, Filter };

/// One direction's algorithm: a cuDNN algorithm (its number and the workspace it asked for), or one
/// of dptrain's kernel families (whose scratch is the family's own size). chunk > 0: cuDNN over
/// sub-batches of `chunk` samples.
struct ConvAlgo {
  ConvImpl impl = ConvImpl::Cudnn;
  int cudnn = 0;
  size_t memory = 0;
  int chunk = 0;
};

/// "cuDNN 1", "cuDNN 0 in chunks of 128", "direct", "tiled", "mma", "small", "the reference kernels".
std::string label(const ConvAlgo& a);

/// cuDNN's tensor descriptors of one batch size, and of the sub-batches its chunked algorithms run.
struct ConvBatch {
  struct Chunk {
    int n = 0;
    CudnnTensorDesc x, y;
  };
  int n = 0;
  CudnnTensorDesc x, y;
  std::vector<Chunk> chunks;
  const Chunk& chunk(int samples) const;
};

class ConvExecutor {
 public:
  /// in, out: one sample's dims. relu: the ReLU after the layer is absorbed (forward applies it,
  /// backward masks by it). pooled: a max pooling absorbed after the layer adds the bias and the
  /// ReLU itself, so forward runs without either. tf32: TF32 math allowed (cuDNN, and the
  /// tensor-core kernels in TF32 rather than 3xTF32).
  ConvExecutor(Dims in, Dims out, int kernel, int stride, int padding, bool tf32, bool relu, bool pooled);

  kernels::ConvGeometry geometry(int n) const;
  bool tf32() const { return tf32_; }
  bool relu() const { return relu_; }
  bool pooled() const { return pooled_; }
  cudnnFilterDescriptor_t filter_desc() const { return filter_; }
  cudnnConvolutionDescriptor_t conv_desc() const { return conv_; }

  /// Descriptors of a batch of n samples; add_chunk() adds those of sub-batches of `samples`.
  ConvBatch batch(int n) const;
  void add_chunk(ConvBatch& b, int samples) const;

  /// Workspace bytes an algorithm needs at batch n.
  size_t bytes(const ConvAlgo& a, int n) const;

  /// dptrain's kernel families that may serve one direction at batch n, fastest expected first (the
  /// three directions of mnist_cnn's conv2 at batch 64 on an H200: tiled FMA 248 us, 3xTF32 277,
  /// TF32 170), then the small kernels. The tensor-core ones round like FFT (kernels/conv_mma.h):
  /// not under `exact`. The direct kernels compute no input gradient, and their filter gradient's
  /// scratch grows with the batch and the plane: past kMaxConvWorkspace cuDNN serves that direction.
  std::vector<ConvImpl> own_kernels(int n, bool exact, ConvDirection d) const;

  /// y = conv(x, w) (+ b, then the ReLU, unless pooled). cuDNN runs on handle h, bound to stream.
  void forward(cudnnHandle_t h, cudaStream_t stream, void* ws, const ConvBatch& b, const ConvAlgo& a, const float* x,
               const float* w, const float* bias, float* y) const;
  /// dx = conv_transpose(dy, w).
  void backward_data(cudnnHandle_t h, cudaStream_t stream, void* ws, const ConvBatch& b, const ConvAlgo& a,
                     const float* dy, const float* w, float* dx) const;
  /// The gradient of the convolution's output: dout, masked into `masked` by an absorbed ReLU
  /// (`out`: the layer's output). Where cuDNN takes the filter gradient, this pass also sums the
  /// bias gradient into db (dptrain's kernels sum it themselves).
  const float* masked_gradient(cudaStream_t stream, int n, const ConvAlgo& filter, const float* dout, const float* out,
                               float* masked, float* db, float* partials) const;
  /// dw (and with dptrain's kernels db). In chunks, each chunk after the first adds to dw (beta 1),
  /// in chunk order: deterministic.
  void filter_grad(cudnnHandle_t h, cudaStream_t stream, void* ws, const ConvBatch& b, const ConvAlgo& a,
                   const float* x, const float* dy, float* dw, float* db) const;

 private:
  /// Calls f(x descriptor, y descriptor, first sample) for the whole batch, or for each chunk.
  template <typename F>
  void for_each_chunk(const ConvBatch& b, const ConvAlgo& a, F f) const;

  Dims in_, out_;
  int kernel_, stride_, padding_;
  bool tf32_, relu_, pooled_;
  kernels::MmaMath math_;  // float32: 3xTF32; precision tf32: TF32
  CudnnFilterDesc filter_;
  CudnnConvDesc conv_;
};

}  // namespace dptrain
