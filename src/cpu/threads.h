// Thread count of the CPU reference backend. There is one pool, OpenMP's: OpenBLAS runs
// single-threaded inside cpu::gemm's blocks (see cpu/gemm.h). Results are deterministic for a given
// thread count.
#pragma once

#include <string>

namespace dptrain {
/// The most CPU threads --threads accepts: beyond any machine dptrain runs on, and below where
/// OpenMP fails to create them (50,000 gave an error without a name, 100,000 a crash).
constexpr int kMaxCpuThreads = 1024;

void set_cpu_threads(int threads);
int cpu_threads();

/// OpenBLAS's kernel family in use (e.g. "Haswell", "SkylakeX").
std::string blas_core_name();
/// A better OPENBLAS_CORETYPE when OpenBLAS fell back to its generic "Prescott" kernels on a CPU
/// with AVX2 or AVX-512 (seen on some virtual machines, 3x slower); "" otherwise. OpenBLAS reads
/// the variable only when it loads, so main() re-executes itself with it set.
std::string better_blas_coretype();

}  // namespace dptrain
