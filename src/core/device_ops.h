// Stream-ordered memory operations on whatever device a DeviceContext drives. On CUDA every
// operation is queued on the context's compute stream (never the legacy default stream, which does
// not order with a non-blocking stream); download() and synchronize() are the only calls that wait,
// and the training loop uses them only at logging points.
#pragma once

#include <span>

#include "core/device_context.h"

namespace dptrain {

template <typename T>
void zero_async(DeviceContext& ctx, std::span<T> data);

/// Host -> context memory; returns when the copy is complete (set-up only, not the hot path).
template <typename T>
void upload(DeviceContext& ctx, std::span<T> dst, std::span<const T> src);

/// Context memory -> host, after all queued work (the side stream's included); blocks.
template <typename T>
void download(DeviceContext& ctx, std::span<const T> src, std::span<T> dst);

/// Waits for all work queued on the context (both streams on CUDA).
void synchronize(DeviceContext& ctx);

}  // namespace dptrain
