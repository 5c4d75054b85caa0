#!/usr/bin/env python3
"""A probe, not product code: the LeNet-5 head's phases, block by block.

Writes a copy of kernels/lenet5_step.cu (or another version of it) with a %globaltimer stamp by
thread 0 of each head block at its start, once its staging has landed, and after each barrier
(and its SM's id), and a report printed at exit for the last head launch: each phase's earliest
and latest time over the blocks, then rank 0 of every cluster and every block of the last one.
Where two clusters' blocks share an SM, the younger one's phases show the wait.

    python3 bench/lenet5_head_phases.py kernels/lenet5_step.cu /tmp/head_phases.cu
    nvcc -O3 -arch=sm_90 -std=c++17 -I. -Isrc -DLENET5_CU='"/tmp/head_phases.cu"' \
        bench/lenet5_step_probe.cu src/core/cuda_check.cpp -o /tmp/phases
    /tmp/phases ncu 257      # two passes at 257; the second's stamps print at exit
"""
import sys

src, dst = sys.argv[1], sys.argv[2]
lines = open(src).read().split('\n')
out = []
in_head = False
k = 0
names = []
for i, line in enumerate(lines):
    if line.startswith('__global__ void DPTRAIN_HEAD_CLUSTER'):
        in_head = True
    if in_head and line.strip() == '#endif' and lines[i + 1] == '}':
        out.append('  PHASE(%d);' % k); names.append('end'); k += 1
        in_head = False
    out.append(line)
    if not in_head:
        continue
    s = line.strip()
    if s.startswith('const int first = cl'):
        out.append('  PHASE(%d);' % k); names.append('start'); k += 1
    elif s == '__pipeline_wait_prior(0);' and lines[i + 1].strip().startswith('cluster.sync();  // every block'):
        out.append('  PHASE(%d);' % k); names.append('staged'); k += 1
    elif s.startswith('cluster.sync()') or s.startswith('__syncthreads()'):
        out.append('  PHASE(%d);' % k); names.append('L%d' % (i + 1)); k += 1
text = '\n'.join(out)
pre = r'''
#include <cstdio>
#include <cstdlib>
#include <vector>
__device__ unsigned long long g_stamps[8192][16];
#define PHASE(k) do { if (threadIdx.x == 0) { unsigned long long t_; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_)); \
  g_stamps[blockIdx.x][k] = t_; if ((k) == 0) { unsigned s_; asm volatile("mov.u32 %0, %%smid;" : "=r"(s_)); g_stamps[blockIdx.x][15] = s_; } } } while (0)
static int g_last_blocks = 0;
static const char* g_names[] = {NAMES};
static void print_stamps() {
  std::vector<unsigned long long> h(static_cast<size_t>(g_last_blocks) * 16);
  if (cudaMemcpyFromSymbol(h.data(), g_stamps, h.size() * 8) != cudaSuccess) return;
  unsigned long long t0 = ~0ull;
  for (int b = 0; b < g_last_blocks; ++b) t0 = h[b * 16] < t0 ? h[b * 16] : t0;
  std::printf("head phases, %d blocks (us from the first block's start): phase min / max over blocks\n", g_last_blocks);
  for (int k = 0; k < KPHASES; ++k) {
    double lo = 1e30, hi = 0;
    for (int b = 0; b < g_last_blocks; ++b) { double v = (h[b * 16 + k] - t0) * 1e-3; lo = v < lo ? v : lo; hi = v > hi ? v : hi; }
    std::printf("  %-6s %7.2f %7.2f\n", g_names[k], lo, hi);
  }
  std::printf("per block (rank 0 of each cluster, and every block of the last): sm, then each phase\n");
  for (int b = 0; b < g_last_blocks; ++b) {
    if (b % 8 != 0 && b < g_last_blocks - 8) continue;
    std::printf("  b%4d sm%3llu:", b, h[b * 16 + 15]);
    for (int k = 0; k < KPHASES; ++k) std::printf(" %6.2f", (h[b * 16 + k] - t0) * 1e-3);
    std::printf("\n");
  }
}
'''
pre = pre.replace('NAMES', ', '.join('"%s"' % n for n in names)).replace('KPHASES', str(k))
# the stamps' declarations after the includes, the record of the grid at the head's launch
text = text.replace('namespace dptrain::kernels {\n', pre + '\nnamespace dptrain::kernels {\n', 1)
old = 'void launch_head(const Args& a, cudaStream_t stream) {\n'
assert old in text
text = text.replace(old, old + '  static bool registered = (std::atexit(print_stamps), true); (void)registered;\n  g_last_blocks = head_clusters(a.n) * kCluster;\n')
open(dst, 'w').write(text)
print(k, 'phases:', names)
