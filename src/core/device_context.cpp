#include "core/device_context.h"

#include <stdexcept>

#include "core/cuda_support.h"
#if DPTRAIN_HAVE_CUDA
#include "core/cuda_context.h"
#endif

namespace dptrain {

#if !DPTRAIN_HAVE_CUDA
// A CPU-only build makes no CudaContext, so a DeviceContext's is always null. This stand-in only
// lets unique_ptr<CudaContext> be destroyed and the calls below compile.
class CudaContext {
 public:
  void set_step(const StepState&) { throw_built_without_cuda(); }
  void join() { throw_built_without_cuda(); }
  const StepState* step() const { throw_built_without_cuda(); }
};
#endif

DeviceContext::DeviceContext() = default;
DeviceContext::DeviceContext(std::unique_ptr<CudaContext> cuda) : device_(Device::Cuda), cuda_(std::move(cuda)) {}
DeviceContext::~DeviceContext() = default;
DeviceContext::DeviceContext(DeviceContext&&) noexcept = default;
DeviceContext& DeviceContext::operator=(DeviceContext&&) noexcept = default;

void DeviceContext::set_step(const StepState& state) {
  if (cuda_) cuda_->set_step(state);
  else host_step_ = state;
}

void DeviceContext::join_side_work() {
  if (cuda_) cuda_->join();
}

const StepState* DeviceContext::step() const { return cuda_ ? cuda_->step() : &host_step_; }

CudaContext& DeviceContext::cuda() const {
  if (!cuda_) throw std::logic_error("DeviceContext::cuda() called on a CPU context");
  return *cuda_;
}

}  // namespace dptrain
