// Planning a model for a batch size one layer at a time, so the start-up breakdown
// (train/startup_timer.h) can say which layer and direction the planning time went to. It calls
// the layers' own plan() (the planner, and any plan cache behind it, decide what planning costs);
// it only times around the calls.
#pragma once

#include "core/device_context.h"
#include "model/model.h"
#include "train/startup_timer.h"

namespace dptrain {

/// As model.plan(ctx, batch, backward), layer by layer. With a timer, on CUDA (the CPU layers have
/// nothing to plan), each layer's time goes into it: a training batch is planned forward first,
/// then backward (a second call that adds the backward choices to the forward plan), so the two
/// directions are timed apart. Layers that took under 10 microseconds (nothing to plan) are left out.
void plan_model(Model<float>& model, DeviceContext& ctx, int batch, bool backward, StartupTimer* timer);

}  // namespace dptrain
