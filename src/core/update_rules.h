// The optimizers' per-element update rules, written once for the CPU loop and the CUDA kernel.
// Both sides compile them without fused multiply-adds (-ffp-contract=off, nvcc --fmad=false), and
// sqrt and division are correctly rounded on both, so CPU and GPU updates agree bit for bit.
// Formulas follow torch.optim's single-tensor implementations (PyTorch 2.x). Options are selects,
// not branches, so the CPU loops vectorise.
#pragma once

#include <cmath>

#include "core/host_device.h"
#include "core/step_scalars.h"

namespace dptrain::rules {

struct SgdHyper {
  bool momentum;  ///< a momentum buffer is kept (momentum != 0, or cycled); its value is s.momentum
  float dampening, weight_decay;
  bool nesterov;
};

/// torch.optim.SGD: d_p = g + wd*p; buf = first ? d_p : m*buf + (1-dampening)*d_p;
/// d_p = nesterov ? d_p + m*buf : buf; p -= lr*d_p. m = s.momentum (it may change every step).
DPTRAIN_HD void sgd(float& p, float g, float& buf, const SgdHyper& h, const StepScalars& s) {
  if (h.weight_decay != 0.0f) g = g + h.weight_decay * p;
  if (h.momentum) {
    buf = s.first_step != 0.0f ? g : s.momentum * buf + (1.0f - h.dampening) * g;
    g = h.nesterov ? g + s.momentum * buf : buf;
  }
  p = p - s.lr * g;
}

struct AdamHyper {
  float beta2, eps, weight_decay;  ///< beta1 is s.momentum (a schedule may cycle it)
  bool decoupled;  ///< AdamW
};

/// torch.optim.Adam / AdamW: m.lerp_(g, 1-b1); v = b2*v + (1-b2)*g*g;
/// p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps); AdamW first p *= 1 - lr*wd, Adam adds wd*p to g.
/// b1 = s.momentum and bc1 = 1 - b1^t with this step's b1, as torch.optim.Adam under OneCycleLR.
DPTRAIN_HD void adam(float& p, float g, float& m, float& v, const AdamHyper& h, const StepScalars& s) {
  const bool decay = h.weight_decay != 0.0f;
  p = decay && h.decoupled ? p * (1.0f - s.lr * h.weight_decay) : p;
  g = decay && !h.decoupled ? g + h.weight_decay * p : g;
  m = m + (1.0f - s.momentum) * (g - m);
  v = v * h.beta2 + (1.0f - h.beta2) * (g * g);
  const float denom = sqrtf(v) / s.bias_correction2_sqrt + h.eps;
  p = p - (s.lr / s.bias_correction1) * (m / denom);
}

struct AdadeltaHyper {
  float rho, eps, weight_decay;
};

/// torch.optim.Adadelta: sq = rho*sq + (1-rho)*g*g; delta = sqrt(acc+eps)/sqrt(sq+eps)*g;
/// acc = rho*acc + (1-rho)*delta*delta; p -= lr*delta.
DPTRAIN_HD void adadelta(float& p, float g, float& sq, float& acc, const AdadeltaHyper& h, const StepScalars& s) {
  g = h.weight_decay != 0.0f ? g + h.weight_decay * p : g;
  sq = sq * h.rho + (1.0f - h.rho) * (g * g);
  const float std = sqrtf(sq + h.eps);
  const float delta = sqrtf(acc + h.eps) / std * g;
  acc = acc * h.rho + (1.0f - h.rho) * (delta * delta);
  p = p - s.lr * delta;
}

}  // namespace dptrain::rules
