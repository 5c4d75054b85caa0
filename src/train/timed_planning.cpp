#include "train/timed_planning.h"

namespace dptrain {

void plan_model(Model<float>& model, DeviceContext& ctx, int batch, bool backward, StartupTimer* timer) {
  if (timer == nullptr || !ctx.on_cuda()) {
    model.plan(ctx, batch, backward);
    return;
  }
  constexpr double kNothingPlanned = 1e-5;
  for (const auto& layer : model.layers()) {
    for (const bool with_backward : {false, true}) {
      if (with_backward && !backward) break;
      const auto t0 = StartupTimer::Clock::now();
      layer->plan(ctx, batch, with_backward);
      const double s = seconds_since(t0);
      if (s >= kNothingPlanned) timer->add_plan(layer->name(), batch, with_backward ? "backward" : "forward", s);
    }
  }
  if (!backward) return;
  const auto t0 = StartupTimer::Clock::now();
  model.plan_train_pass(ctx, batch);
  const double s = seconds_since(t0);
  if (s >= kNothingPlanned) timer->add_plan("train pass", batch, "fused or layered", s);
}

}  // namespace dptrain
