// Average pooling on CUDA (layers/avgpool2d.h): avgpool2d and global_avgpool through
// kernels/pool_kernels.h, whose arithmetic is the CPU backend's (same order, no atomics). No scratch
// and no state: nothing to reserve, and the step graph captures two plain launches.
#include "core/cuda_context.h"
#include "kernels/pool_kernels.h"
#include "layers/avgpool2d.h"
#include "layers/cuda/cuda_layers.h"

namespace dptrain {

namespace {

class AvgPoolCuda final : public AvgPoolLayer<float> {
 public:
  using AvgPoolLayer<float>::AvgPoolLayer;
  void forward(DeviceContext& ctx, TensorView<const float> in, TensorView<float> out, Phase, const StepInfo&) override {
    kernels::avgpool_forward(in.data, out.data, geometry(in.n), ctx.cuda().stream());
  }
  void backward(DeviceContext& ctx, TensorView<const float> in, TensorView<const float>, TensorView<const float> dout,
                TensorView<float> din) override {
    if (din.data != nullptr) kernels::avgpool_backward(dout.data, din.data, geometry(in.n), ctx.cuda().stream());
  }

 private:
  kernels::AvgPoolGeometry geometry(int n) const {
    const Dims in = input_dims(), out = output_dims();
    const AvgPoolWindow& w = window();
    return {n * in.c, in.h, in.w, out.h, out.w, w.kh, w.kw, w.stride, w.pad};
  }
};

}  // namespace

std::unique_ptr<Layer<float>> make_avgpool2d_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<AvgPoolCuda>("avgpool2d", c, index, in);
}
std::unique_ptr<Layer<float>> make_global_avgpool_cuda(const LayerConfig& c, int index, Dims in) {
  return std::make_unique<AvgPoolCuda>("global_avgpool", c, index, in);
}

}  // namespace dptrain
