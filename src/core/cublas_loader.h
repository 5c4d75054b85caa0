// cuBLAS, loaded with dlopen on a thread of its own instead of linked into the binary.
//
// Why: loading libcublas runs libcublasLt's static initialisers, which touch about 210 MB: 60 to
// 90 ms before main() in every process that links it (`--version`, CPU runs and the tests
// included; 64 ms of the path to the first step on the device). Started on a thread as soon as a
// GPU is known to be there, the load runs beside the creation of CUDA's context (about 120 ms),
// and a process that never uses a GPU never pays it.
//
// How: cublas_loader.cpp defines the cuBLAS and cuBLASLt entry points dptrain calls, with
// cublas_v2.h's and cublasLt.h's declarations (so the compiler checks each signature); each
// forwards to the function of the same name in the loaded library (cuBLASLt's: in libcublasLt,
// which libcublas loads as its dependency). Call sites stay plain cuBLAS. A cuBLAS function missing
// from that table is a link error, never a silent fallback: add it there.
//
// Invariants:
//  - The library is loaded once per process; the first cuBLAS call waits for the load (and starts
//    it, if start_loading_cublas() was never called).
//  - A library that cannot be loaded, or that lacks a function, makes every cuBLAS call throw
//    CudaError naming the library file and the loader's reason.
#pragma once

namespace dptrain {

/// Starts loading cuBLAS on a thread, once per process; returns at once.
void start_loading_cublas();

/// Seconds the load took (dlopen and the symbols), for the start-up breakdown; waits for it.
double cublas_load_seconds();

}  // namespace dptrain
