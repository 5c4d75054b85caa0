// Thread count of the CPU reference backend: OpenBLAS's GEMMs and the OpenMP loops around them.
// Results are deterministic for a given count (no loop reduces across threads).
#pragma once

namespace dptrain {

void set_cpu_threads(int threads);
int cpu_threads();

}  // namespace dptrain
