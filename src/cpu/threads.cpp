#include "cpu/threads.h"

#include <cblas.h>
#include <omp.h>

namespace dptrain {

void set_cpu_threads(int threads) {
  if (threads <= 0) return;
  openblas_set_num_threads(threads);
  omp_set_num_threads(threads);
}

int cpu_threads() { return openblas_get_num_threads(); }

}  // namespace dptrain
