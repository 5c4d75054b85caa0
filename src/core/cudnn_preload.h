// cuDNN's parts, loaded beside the CUDA context before cuDNN asks for them.
//
// Why: cuDNN 9's libcudnn is a small front that loads its parts (graph, ops, cnn, heuristics and
// the two engine libraries) with dlopen when they are first needed, the first handle or the first
// convolution planned. On the development machine those loads take about 90 ms (the precompiled
// engines alone 45 ms), on the path to the first step. Loaded on a thread while the CUDA context
// is created (about 120 ms, most of it in the driver), they cost the first step nothing, and
// cuDNN's own loads later find them already there.
//
// Invariants:
//  - Only a warm-up: each part comes from the folder of the libcudnn this process linked, under the
//    name cuDNN itself asks for, so cuDNN's later dlopen returns the same library and no second copy
//    is ever mapped. A part that is missing (another cuDNN layout) is skipped: cuDNN loads what it
//    needs itself, as without the preload. Nothing here can fail a run.
//  - Loaded parts stay loaded for the life of the process (cuDNN keeps them too).
//  - cuDNN is never called while the preload runs: CudaContext waits for it before its first
//    cuDNN handle, so cuDNN's own loads never run beside the preload's.
#pragma once

namespace dptrain {

/// Starts loading cuDNN's parts on a thread, once per process; returns at once.
void start_preloading_cudnn();

struct CudnnPreload {
  int parts_loaded = 0;  ///< of the parts listed in cudnn_preload.cpp
  double seconds = 0;
};
/// What the preload did, for the start-up breakdown; waits for it (and starts it if not started).
CudnnPreload cudnn_preload_result();

}  // namespace dptrain
