// Softmax cross-entropy loss (log-softmax + NLL, max-subtracted so it is stable for any logits),
// forward and backward fused: one pass over the logits gives the loss sum, the number of correct
// predictions and dL/dlogits. Label smoothing e (train.label_smoothing) as torch.nn.CrossEntropyLoss:
// the target is (1 - e) onehot + e / C; the reported loss is the smoothed one; accuracy is unchanged.
#pragma once

#include <cstdint>
#include <memory>

#include "core/device_context.h"
#include "core/tensor.h"

namespace dptrain {

template <typename T>
class SoftmaxCrossEntropy {
 public:
  virtual ~SoftmaxCrossEntropy() = default;

  /// Sizes what forward_backward needs for batches of up to max_batch samples of `classes` scores, once
  /// at set-up (forward_backward never allocates). The CPU's loss needs nothing; the GPU's needs it
  /// past one block of samples (256 up to 32 classes, 32 above) and says so otherwise.
  virtual void reserve(DeviceContext&, int /*max_batch*/, int /*classes*/) {}

  /// For logits [n, classes] and labels[n] (int32, same device):
  /// sums[0] += sum_i -sum_c target_ic log softmax(logits_i)_c, target_i = (1 - e) onehot(label_i) + e / C
  /// (e = 0: -log softmax(logits_i)[label_i]);  sums[1] += #{i : argmax logits_i == label_i}
  /// (sums: two doubles in memory of the context's device, accumulated without a host round trip).
  /// If dlogits.data is not null: dlogits_i = (softmax(logits_i) - target_i) * grad_scale.
  /// The argmax takes the first maximum, as torch.argmax does.
  virtual void forward_backward(DeviceContext& ctx, TensorView<const T> logits, const int32_t* labels,
                                T grad_scale, TensorView<T> dlogits, double* sums) = 0;
};

template <typename T>
std::unique_ptr<SoftmaxCrossEntropy<T>> make_softmax_cross_entropy(Device device, double label_smoothing = 0.0);

}  // namespace dptrain
