// StepGather: what a training step's batch gather reads and where it writes, for a kernel that
// reads its batch straight from the dataset instead of after a separate gather launch (LeNet-5's
// fused pass: its conv forward gathers, normalises and keeps the batch). Plain pointers into the
// CUDA batch source's resident arrays; no CUDA header, so the CPU-only build sees it too.
#pragma once

#include <cstdint>

#include "core/step_state.h"

namespace dptrain {

/// Sample s of the step is dataset row order[step->info.first_sample + s]: its pixels normalised
/// as kernels::gather_normalize does, (pixel / 255 - mean) / std, each operation rounded alone, so
/// either way gives the same bits. first_sample is read when the kernel runs (a replayed graph).
struct StepGather {
  const uint8_t* images = nullptr;  ///< [dataset rows][pixels]
  const int32_t* labels = nullptr;  ///< [dataset rows]
  const uint32_t* order = nullptr;  ///< the epoch's order of dataset rows
  const StepState* step = nullptr;  ///< the step's state, in device memory
  int pixels = 0;                   ///< a sample's pixels (C x H x W, one byte each)
  float mean = 0.0f, std = 1.0f;
  float* x = nullptr;    ///< [count][pixels]: the normalised batch, written for the kernels after
  int32_t* y = nullptr;  ///< [count]: its labels
};

}  // namespace dptrain
