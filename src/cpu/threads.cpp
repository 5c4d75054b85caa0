#include "cpu/threads.h"

#include <cblas.h>
#include <omp.h>

namespace dptrain {

void set_cpu_threads(int threads) {
  if (threads > 0) omp_set_num_threads(threads);
}

int cpu_threads() { return omp_get_max_threads(); }

std::string blas_core_name() {
  const char* name = openblas_get_corename();
  return name != nullptr ? name : "";
}

std::string better_blas_coretype() {
  if (blas_core_name() != "Prescott") return "";
  if (__builtin_cpu_supports("avx512f")) return "SkylakeX";
  if (__builtin_cpu_supports("avx2")) return "Haswell";
  return "";
}

}  // namespace dptrain
