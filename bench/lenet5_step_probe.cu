// A probe, not product code: the fused LeNet-5 kernels of kernels/lenet5_step.cu (included, so each
// of the four launches can be timed alone), checked against a double-precision host reference at
// batches 1 to 1000 (with a second run that must give the same bits) and timed in CUDA graphs of 20
// launches: each kernel, the whole pass, and the pass with an SGD update; and the batch cut into parts
// that run side by side on their own streams, with their own finishes or one shared finish, the SGD
// update after it or folded into it (`split`).
//   nvcc -O3 -arch=sm_90 -std=c++17 -I. -Isrc bench/lenet5_step_probe.cu src/core/cuda_check.cpp -o /tmp/probe
//   /tmp/probe check | time N... | split K N... | ncu N (two passes at N, for `ncu -k regex:lenet5`); check prints
//   each batch's gradient bits as a hash, to compare two builds' results bit for bit
// -DLENET5_CU='"path.cu"' probes another version of the kernels (one with make_args, the launch_*
// functions and configure_kernels).
#ifndef LENET5_CU
#define LENET5_CU "kernels/lenet5_step.cu"
#endif
#include LENET5_CU

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#define CK(x) CUDA_CHECK(x)
namespace dptrain::kernels {
// ---------------------------------------------------------------- host reference, double precision
struct HostGrads {
  double loss = 0;
  std::vector<double> g = std::vector<double>(kParams, 0.0);
};

HostGrads reference_step(const std::vector<float>& P, const float* x, const int* labels, int n) {
  HostGrads out;
  auto w = [&](int off, int i) { return static_cast<double>(P[off + i]); };
  for (int s = 0; s < n; ++s) {
    const float* xs = x + static_cast<size_t>(s) * kIn * kIn;
    auto xp = [&](int y, int xx) { return (y >= 0 && y < kIn && xx >= 0 && xx < kIn) ? double(xs[y * kIn + xx]) : 0.0; };
    std::vector<double> p1(kC1 * kQ1), p2(kF0), h1(kF1), h2(kF2), lg(kF3);
    std::vector<int> a1(kC1 * kQ1), a2(kF0);
    for (int c = 0; c < kC1; ++c)
      for (int q = 0; q < kQ1; ++q) {
        double m = -1e300;
        for (int a = 0; a < 4; ++a) {
          const int y = 2 * (q / kP1) + (a >> 1), xx = 2 * (q % kP1) + (a & 1);
          double acc = 0;
          for (int ky = 0; ky < 5; ++ky)
            for (int kx = 0; kx < 5; ++kx) acc += w(kW1, c * 25 + ky * 5 + kx) * xp(y + ky - 2, xx + kx - 2);
          if (a == 0 || acc > m) m = acc, a1[c * kQ1 + q] = a;
        }
        p1[c * kQ1 + q] = std::max(m + w(kB1, c), 0.0);
      }
    for (int o = 0; o < kC2; ++o)
      for (int r = 0; r < 25; ++r) {
        double m = -1e300;
        for (int a = 0; a < 4; ++a) {
          const int oy = 2 * (r / 5) + (a >> 1), ox = 2 * (r % 5) + (a & 1);
          double acc = 0;
          for (int c = 0; c < kC1; ++c)
            for (int ky = 0; ky < 5; ++ky)
              for (int kx = 0; kx < 5; ++kx) acc += w(kW2, (o * kC1 + c) * 25 + ky * 5 + kx) * p1[c * kQ1 + (oy + ky) * kP1 + ox + kx];
          if (a == 0 || acc > m) m = acc, a2[o * 25 + r] = a;
        }
        p2[o * 25 + r] = std::max(m + w(kB2, o), 0.0);
      }
    auto dense = [&](int wo, int bo, const std::vector<double>& in, std::vector<double>& o, bool relu) {
      for (size_t j = 0; j < o.size(); ++j) {
        double acc = w(bo, static_cast<int>(j));
        for (size_t i = 0; i < in.size(); ++i) acc += w(wo, static_cast<int>(j * in.size() + i)) * in[i];
        o[j] = relu ? std::max(acc, 0.0) : acc;
      }
    };
    dense(kW3, kB3, p2, h1, true);
    dense(kW4, kB4, h1, h2, true);
    dense(kW5, kB5, h2, lg, false);
    double m = *std::max_element(lg.begin(), lg.end()), sum = 0;
    for (double v : lg) sum += std::exp(v - m);
    out.loss += (std::log(sum) + m - lg[labels[s]]) / n;
    std::vector<double> d3(kF3), dh2(kF2), dh1(kF1), dp2(kF0), dp1(kC1 * kQ1, 0.0);
    for (int k = 0; k < kF3; ++k) d3[k] = (std::exp(lg[k] - m) / sum - (k == labels[s] ? 1.0 : 0.0)) / n;
    auto back = [&](int wo, int bo, const std::vector<double>& d, const std::vector<double>& in, std::vector<double>& din) {
      for (size_t j = 0; j < d.size(); ++j) {
        out.g[bo + j] += d[j];
        for (size_t i = 0; i < in.size(); ++i) out.g[wo + j * in.size() + i] += d[j] * in[i];
      }
      for (size_t i = 0; i < in.size(); ++i) {
        double acc = 0;
        for (size_t j = 0; j < d.size(); ++j) acc += w(wo, static_cast<int>(j * in.size() + i)) * d[j];
        din[i] = in[i] > 0 ? acc : 0.0;
      }
    };
    back(kW5, kB5, d3, h2, dh2);
    back(kW4, kB4, dh2, h1, dh1);
    back(kW3, kB3, dh1, p2, dp2);
    for (int o = 0; o < kC2; ++o)
      for (int r = 0; r < 25; ++r) {
        const double g = dp2[o * 25 + r];
        const int a = a2[o * 25 + r], oy = 2 * (r / 5) + (a >> 1), ox = 2 * (r % 5) + (a & 1);
        out.g[kB2 + o] += g;
        for (int c = 0; c < kC1; ++c)
          for (int ky = 0; ky < 5; ++ky)
            for (int kx = 0; kx < 5; ++kx) {
              out.g[kW2 + (o * kC1 + c) * 25 + ky * 5 + kx] += g * p1[c * kQ1 + (oy + ky) * kP1 + ox + kx];
              dp1[c * kQ1 + (oy + ky) * kP1 + ox + kx] += g * w(kW2, (o * kC1 + c) * 25 + ky * 5 + kx);
            }
      }
    for (int c = 0; c < kC1; ++c)
      for (int q = 0; q < kQ1; ++q) {
        const double g = p1[c * kQ1 + q] > 0 ? dp1[c * kQ1 + q] : 0.0;
        const int a = a1[c * kQ1 + q], y = 2 * (q / kP1) + (a >> 1), xx = 2 * (q % kP1) + (a & 1);
        out.g[kB1 + c] += g;
        for (int ky = 0; ky < 5; ++ky)
          for (int kx = 0; kx < 5; ++kx) out.g[kW1 + c * 25 + ky * 5 + kx] += g * xp(y + ky - 2, xx + kx - 2);
      }
  }
  return out;
}


double rel_error(const std::vector<float>& got, const std::vector<double>& ref, int begin, int end) {
  double num = 0, den = 0;
  for (int i = begin; i < end; ++i) num += (got[i] - ref[i]) * (got[i] - ref[i]), den += ref[i] * ref[i];
  return std::sqrt(num / std::max(den, 1e-300));
}

// The finish with the SGD update folded in (the next list's lever c): the thread that writes a
// parameter's summed gradient updates that parameter, as sgd_kernel below would (the same
// expression, so the same bits); the last block sums the losses as the finish does.
__global__ void __launch_bounds__(kFinishThreads)
    finish_sgd_kernel(const Args a, int conv_blocks, int clusters, float* P, float* velocity, float lr) {
  __shared__ float part[kFinishGroups][32];
  __shared__ double warp_loss[kFinishGroups], warp_correct[kFinishGroups];
  const int tid = threadIdx.x, lane = tid & 31;
  if (blockIdx.x < kConvFinishBlocks + kLinFinishBlocks) {
    const bool conv = blockIdx.x < kConvFinishBlocks;
    const int p0 = conv ? blockIdx.x * 32 : kConvParams + (blockIdx.x - kConvFinishBlocks) * 32;
    const int end = conv ? kConvParams : kParams;
    if (conv)
      sum_partials(a, a.partial_conv, conv_blocks, kConvParams, 0, p0, end, part);
    else
      sum_partials(a, a.partial_lin, clusters, kLinStride, kConvParams, p0, end, part);
    if (tid < 32 && p0 + lane < end) {  // the threads that wrote the sums above
      const int m = model_offset(a, p0 + lane);
      const float g = a.grads[m] + 5e-4f * P[m];
      const float v = 0.9f * velocity[m] + g;
      velocity[m] = v;
      P[m] -= lr * (g + 0.9f * v);
    }
    return;
  }
  double loss = 0.0, correct = 0.0;
  for (int i = tid; i < a.n; i += kFinishThreads) loss += a.losses[i], correct += a.correct[i];
  for (int off = 16; off > 0; off /= 2) {
    loss += __shfl_down_sync(0xffffffffu, loss, off);
    correct += __shfl_down_sync(0xffffffffu, correct, off);
  }
  if (lane == 0) warp_loss[tid / 32] = loss, warp_correct[tid / 32] = correct;
  __syncthreads();
  if (tid == 0) {
    double tl = 0.0, tc = 0.0;
    for (int w = 0; w < kFinishGroups; ++w) tl += warp_loss[w], tc += warp_correct[w];
    a.sums[0] += tl;
    a.sums[1] += tc;
  }
}

}  // namespace dptrain::kernels

namespace dk = dptrain::kernels;

__global__ void sgd_kernel(const float* __restrict__ grad, float* __restrict__ P, float* __restrict__ velocity, float lr) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= dk::kParams) return;
  const float g = grad[p] + 5e-4f * P[p];
  const float v = 0.9f * velocity[p] + g;
  velocity[p] = v;
  P[p] -= lr * (g + 0.9f * v);
}

// The split probe's join: the parts' gradients summed in part order (each part scaled by 1 / n).
struct Parts {
  const float* g[4];
  int k;
};
__global__ void sum_parts_kernel(Parts parts, float* __restrict__ out) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= dk::kParams) return;
  float acc = parts.g[0][p];
  for (int k = 1; k < parts.k; ++k) acc += parts.g[k][p];
  out[p] = acc;
}

template <typename F>
double time_graph(F what, int reps) {
  cudaStream_t stream;
  CK(cudaStreamCreate(&stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  for (int i = 0; i < 20; ++i) what(stream);
  CK(cudaStreamEndCapture(stream, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 3; ++i) CK(cudaGraphLaunch(exec, stream));
  CK(cudaStreamSynchronize(stream));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  CK(cudaEventRecord(a, stream));
  for (int i = 0; i < reps; ++i) CK(cudaGraphLaunch(exec, stream));
  CK(cudaEventRecord(b, stream));
  CK(cudaEventSynchronize(b));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  CK(cudaStreamDestroy(stream));
  return 1000.0 * ms / (reps * 20);
}

int main(int argc, char** argv) try {
  const std::string mode = argc > 1 ? argv[1] : "all";
  constexpr int kMaxN = 8192;
  std::mt19937 rng(1);
  std::vector<float> P(dk::kParams);
  auto fill = [&](int off, int count, int fan_in) {
    std::uniform_real_distribution<float> u(-1.0f / std::sqrt(float(fan_in)), 1.0f / std::sqrt(float(fan_in)));
    for (int i = 0; i < count; ++i) P[off + i] = u(rng);
  };
  fill(dk::kW1, 150, 25), fill(dk::kB1, 6, 25), fill(dk::kW2, 2400, 150), fill(dk::kB2, 16, 150);
  fill(dk::kW3, 48000, 400), fill(dk::kB3, 120, 400), fill(dk::kW4, 10080, 120), fill(dk::kB4, 84, 120);
  fill(dk::kW5, 840, 84), fill(dk::kB5, 10, 84);
  std::vector<float> xs(static_cast<size_t>(kMaxN) * 784);
  std::uniform_real_distribution<float> ux(-0.42f, 2.8f);
  for (float& v : xs) v = ux(rng);
  std::vector<int> labels(kMaxN);
  for (int i = 0; i < kMaxN; ++i) labels[i] = static_cast<int>(rng() % 10);

  float *x, *params, *grads, *velocity, *scratch;
  unsigned char* bytes;
  int* dlabels;
  double* sums;
  const dk::Lenet5ScratchSize size = dk::lenet5_step_scratch(kMaxN);
  CK(cudaMalloc(&x, xs.size() * 4));
  CK(cudaMalloc(&params, dk::kParams * 4));
  CK(cudaMalloc(&grads, dk::kParams * 4));
  CK(cudaMalloc(&velocity, dk::kParams * 4));
  CK(cudaMalloc(&scratch, size.floats * 4));
  CK(cudaMalloc(&bytes, size.bytes));
  CK(cudaMalloc(&dlabels, kMaxN * 4));
  CK(cudaMalloc(&sums, 16));
  CK(cudaMemcpy(x, xs.data(), xs.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(params, P.data(), dk::kParams * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dlabels, labels.data(), kMaxN * 4, cudaMemcpyHostToDevice));
  CK(cudaMemset(velocity, 0, dk::kParams * 4));
  auto step_of = [&](int n) {
    dk::Lenet5Step p{};
    p.params = params;
    for (int t = 0; t < dk::kLenet5Tensors; ++t) p.offsets[t] = dk::dense_start(t);
    p.x = x, p.labels = dlabels, p.n = n, p.grad_scale = 1.0f / n, p.label_smoothing = 0.0f;
    p.grads = grads, p.sums = sums, p.scratch = scratch, p.scratch_bytes = bytes;
    return p;
  };
  // The update after the pass (learning rate 0 where timed: every timed run sees the same parameters).
  const auto sgd = [&](cudaStream_t st, float lr = 0.0f) {
    sgd_kernel<<<(dk::kParams + 255) / 256, 256, 0, st>>>(grads, params, velocity, lr);
  };
  dk::configure_kernels();
  {
    int fb = 0, bb = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fb, dk::lenet5_conv_forward_kernel, dk::kConvThreads, sizeof(dk::ConvForwardSmem)));
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bb, dk::lenet5_conv_backward_kernel, dk::kConvThreads, sizeof(dk::ConvBackwardSmem)));
    // Blocks an SM and clusters resident at once, for the head at tile kTile.
    const auto head_fit = [](auto kernel, size_t smem, int& blocks, int& clusters) {
      CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, dk::kHeadThreads, smem));
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(dk::kCluster * 64);
      cfg.blockDim = dim3(dk::kHeadThreads);
      cfg.dynamicSmemBytes = smem;
      CK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg));
    };
    int hb16 = 0, hc16 = 0, hb24 = 0, hc24 = 0;
    head_fit(dk::lenet5_head_kernel<dk::kNarrowTile>, sizeof(dk::HeadSmem<dk::kNarrowTile>), hb16, hc16);
    head_fit(dk::lenet5_head_kernel<dk::kWideTile>, sizeof(dk::HeadSmem<dk::kWideTile>), hb24, hc24);
    std::printf("smem: conv fwd %zu B (%d/SM), head %zu B (%d/SM, %d clusters) and %zu B (%d/SM, %d clusters), "
                "conv bwd %zu B (%d/SM)\n", sizeof(dk::ConvForwardSmem), fb, sizeof(dk::HeadSmem<dk::kNarrowTile>), hb16,
                hc16, sizeof(dk::HeadSmem<dk::kWideTile>), hb24, hc24, sizeof(dk::ConvBackwardSmem), bb);
  }
  if (mode == "ncu") {
    const int n = argc > 2 ? std::atoi(argv[2]) : 257;
    for (int i = 0; i < 2; ++i) dk::lenet5_step(step_of(n), nullptr);
    CK(cudaDeviceSynchronize());
    return 0;
  }
  bool all_ok = true;
  if (mode == "check" || mode == "all") {
    for (int n : {1, 7, 16, 17, 21, 70, 240, 241, 257, 300, 360, 361, 1000}) {
      const dk::HostGrads ref = dk::reference_step(P, xs.data(), labels.data(), n);
      CK(cudaMemset(sums, 0, 16));
      CK(cudaMemset(grads, 0xff, dk::kParams * 4));
      dk::lenet5_step(step_of(n), nullptr);
      CK(cudaDeviceSynchronize());
      std::vector<float> g(dk::kParams);
      double hs[2];
      CK(cudaMemcpy(g.data(), grads, dk::kParams * 4, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(hs, sums, 16, cudaMemcpyDeviceToHost));
      const double loss = hs[0] / n;
      const char* names[] = {"c1w", "c1b", "c2w", "c2b", "f1w", "f1b", "f2w", "f2b", "f3w", "f3b"};
      double worst = 0;
      std::printf("check n=%d: loss %.6f (host %.6f)", n, loss, ref.loss);
      for (int t = 0; t < 10; ++t) {
        const double e = dk::rel_error(g, ref.g, dk::dense_start(t), dk::dense_start(t + 1));
        worst = std::max(worst, e);
        std::printf(" %s %.1e", names[t], e);
      }
      const bool ok = worst < 1e-4 && std::abs(loss - ref.loss) < 1e-5 * std::max(1.0, ref.loss);
      all_ok = all_ok && ok;
      // The gradients' and sums' bits, so that two builds can be compared run for run.
      unsigned long long bits = 1469598103934665603ull;
      const auto mix = [&](const void* data, size_t bytes) {
        for (size_t b = 0; b < bytes; ++b) bits = (bits ^ static_cast<const unsigned char*>(data)[b]) * 1099511628211ull;
      };
      mix(g.data(), g.size() * sizeof(float));
      mix(hs, sizeof hs);
      std::printf(" -> %s, bits %016llx\n", ok ? "ok" : "WRONG", bits);
      dk::lenet5_step(step_of(n), nullptr);
      std::vector<float> g2(dk::kParams);
      CK(cudaMemcpy(g2.data(), grads, dk::kParams * 4, cudaMemcpyDeviceToHost));
      if (g2 != g) std::printf("  NOT bit for bit on a second run\n"), all_ok = false;
    }
    std::printf("gradient check: %s\n", all_ok ? "all ok" : "FAILED");
  }
  if (mode == "time" || mode == "all") {
    std::vector<int> ns = {16, 64, 128, 256, 257, 300, 512, 1000, 8192};
    if (mode == "time" && argc > 2) {
      ns.clear();
      for (int i = 2; i < argc; ++i) ns.push_back(std::atoi(argv[i]));
    }
    for (int n : ns) {
      const int reps = n >= 4096 ? 5 : 30;
      const dk::Args a = dk::make_args(step_of(n));
      const double k1 = time_graph([&](cudaStream_t st) { dk::launch_conv_forward(a, st); }, reps);
      const double k2 = time_graph([&](cudaStream_t st) { dk::launch_head(a, st); }, reps);
      const double k3 = time_graph([&](cudaStream_t st) { dk::launch_conv_backward(a, st); }, reps);
      const double k4 = time_graph([&](cudaStream_t st) { dk::launch_finish(a, st); }, reps);
      const double pass = time_graph([&](cudaStream_t st) { dk::lenet5_step(step_of(n), st); }, reps);
      const double step = time_graph([&](cudaStream_t st) {
        dk::lenet5_step(step_of(n), st);
        sgd(st);
      }, reps);
      std::printf("n=%5d: pass %7.2f us, +sgd %7.2f (%5.0fk img/s); fwd %6.2f head %6.2f (%d cl) bwd %6.2f (%d bl) fin %5.2f\n",
                  n, pass, step, n / step * 1e3, k1, k2, dk::head_clusters(n), k3, dk::conv_blocks(n), k4);
    }
  }
  // split K N...: the batch of N cut into K parts, each a whole pass on its own stream (forked
  // and joined inside one graph), then the parts' gradients summed and the SGD update: how much
  // one part's head overlaps another's convolutions, against one pass of N with SGD. Also the
  // parts sharing one scratch (each part's samples where the whole pass keeps them, its partial
  // sums after the previous part's) and one finish over every part's partials, with the update
  // after it or folded into it (finish_sgd_kernel), checked against the whole pass.
  if (mode == "split") {
    const int K = argc > 2 ? std::atoi(argv[2]) : 2;
    if (K < 2 || K > 4) throw std::runtime_error("split: K is 2 to 4");
    std::vector<cudaStream_t> side(K);
    std::vector<cudaEvent_t> join(K), forward_done(K);
    cudaEvent_t fork;
    CK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    Parts parts{};
    parts.k = K;
    std::vector<float*> pg(K), psc(K);
    std::vector<unsigned char*> pb(K);
    std::vector<double*> ps(K);
    for (int k = 0; k < K; ++k) {
      CK(cudaStreamCreateWithFlags(&side[k], cudaStreamNonBlocking));
      CK(cudaEventCreateWithFlags(&join[k], cudaEventDisableTiming));
      CK(cudaEventCreateWithFlags(&forward_done[k], cudaEventDisableTiming));
      CK(cudaMalloc(&pg[k], dk::kParams * 4));
      CK(cudaMalloc(&psc[k], size.floats * 4));
      CK(cudaMalloc(&pb[k], size.bytes));
      CK(cudaMalloc(&ps[k], 16));
      parts.g[k] = pg[k];
    }
    // The shared parts' partial sums: every part's conv backward blocks, then every part's head clusters.
    const int max_clusters = dk::head_clusters(kMaxN) + K;
    float *shared_conv, *shared_lin;
    CK(cudaMalloc(&shared_conv, static_cast<size_t>(K) * dk::kConvBackwardBlocks * dk::kConvParams * 4));
    CK(cudaMalloc(&shared_lin, static_cast<size_t>(max_clusters) * dk::kLinStride * 4));
    const auto fold = [&](const dk::Args& a, int blocks, int clusters, cudaStream_t st, float lr = 0.0f) {
      dk::finish_sgd_kernel<<<dk::kConvFinishBlocks + dk::kLinFinishBlocks + 1, dk::kFinishThreads, 0, st>>>(
          a, blocks, clusters, params, velocity, lr);
    };
    for (int i = 3; i < argc; ++i) {
      const int n = std::atoi(argv[i]), reps = n >= 4096 ? 5 : 30;
      // Part k's first sample: even, so each part's byte arrays (1,176 bytes a sample) stay 16-byte aligned.
      const auto first_of = [&](int k) { return k == K ? n : (k * n / K) & ~1; };
      const auto part = [&](int k) {
        const int first = first_of(k), count = first_of(k + 1) - first;
        dk::Lenet5Step p = step_of(count);
        p.x = x + static_cast<size_t>(first) * 784, p.labels = dlabels + first, p.grad_scale = 1.0f / n;
        p.grads = pg[k], p.sums = ps[k], p.scratch = psc[k], p.scratch_bytes = pb[k];
        return p;
      };
      const double whole = time_graph([&](cudaStream_t st) {
        dk::lenet5_step(step_of(n), st);
        sgd(st);
      }, reps);
      const dk::Args whole_args = dk::make_args(step_of(n));
      const auto whole_folded = [&](cudaStream_t st, float lr) {  // the whole pass, SGD folded into its finish
        dk::launch_conv_forward(whole_args, st);
        dk::launch_head(whole_args, st);
        dk::launch_conv_backward(whole_args, st);
        fold(whole_args, dk::conv_blocks(n), dk::head_clusters(n), st, lr);
      };
      const double whole_fold = time_graph([&](cudaStream_t st) { whole_folded(st, 0.0f); }, reps);
      std::vector<dk::Args> args(K), shared(K);
      dk::Args one = whole_args;  // the shared finish's view: every sample, every part's partials
      one.partial_conv = shared_conv, one.partial_lin = shared_lin;
      int blocks = 0, clusters = 0;
      for (int k = 0; k < K; ++k) {
        args[k] = dk::make_args(part(k));
        dk::Args& a = shared[k];
        a = args[k];
        const size_t first = static_cast<size_t>(first_of(k));
        a.p1 = one.p1 + first * dk::kC1 * dk::kQ1, a.a1 = one.a1 + first * dk::kC1 * dk::kQ1;
        a.p2 = one.p2 + first * dk::kF0, a.dp2 = one.dp2 + first * dk::kF0, a.a2 = one.a2 + first * dk::kF0;
        a.losses = one.losses + first, a.correct = one.correct + first;
        a.partial_conv = shared_conv + static_cast<size_t>(blocks) * dk::kConvParams;
        a.partial_lin = shared_lin + static_cast<size_t>(clusters) * dk::kLinStride;
        blocks += dk::conv_blocks(a.n), clusters += dk::head_clusters(a.n);
      }
      // The parts' passes, forked from and joined to the graph's stream. Staggered: part k's conv
      // forward starts once part k-1's has ended, so one part's head runs beside the next one's
      // conv forward, and its conv backward beside the next one's head; else every part starts at
      // once. Separate: each part's own finish, then the parts' gradients summed and the update;
      // shared: one finish over every part's partials (then the update, or the update folded in).
      enum class Join { Separate, Shared, SharedFold };
      const auto enqueue_parts = [&](bool staggered, Join how, cudaStream_t st) {
        const std::vector<dk::Args>& use = how == Join::Separate ? args : shared;
        CK(cudaEventRecord(fork, st));
        for (int k = 0; k < K; ++k) {
          CK(cudaStreamWaitEvent(side[k], staggered && k > 0 ? forward_done[k - 1] : fork));
          dk::launch_conv_forward(use[k], side[k]);
          CK(cudaEventRecord(forward_done[k], side[k]));
          dk::launch_head(use[k], side[k]);
          dk::launch_conv_backward(use[k], side[k]);
          if (how == Join::Separate) dk::launch_finish(use[k], side[k]);
          CK(cudaEventRecord(join[k], side[k]));
          CK(cudaStreamWaitEvent(st, join[k]));
        }
        if (how == Join::Separate) {
          sum_parts_kernel<<<(dk::kParams + 255) / 256, 256, 0, st>>>(parts, grads);
          sgd(st);
        } else if (how == Join::Shared) {
          dk::lenet5_finish_kernel<<<dk::kConvFinishBlocks + dk::kLinFinishBlocks + 1, dk::kFinishThreads, 0, st>>>(
              one, blocks, clusters);
          sgd(st);
        } else {
          fold(one, blocks, clusters, st);
        }
      };
      const auto time_parts = [&](bool staggered, Join how) {
        return time_graph([&](cudaStream_t st) { enqueue_parts(staggered, how, st); }, reps);
      };
      const double split_step = time_parts(false, Join::Separate), staggered = time_parts(true, Join::Separate);
      const double shared_step = time_parts(true, Join::Shared), shared_fold = time_parts(true, Join::SharedFold);
      // Each part alone, to see what the overlap saves against running the parts one after another.
      double alone = 0;
      for (int k = 0; k < K; ++k) alone += time_graph([&](cudaStream_t st) { dk::lenet5_step(part(k), st); }, reps);
      std::printf("split %d n=%5d: whole+sgd %7.2f us (%5.0fk img/s), sgd folded %7.2f; parts at once + sum + sgd %7.2f; "
                  "staggered %7.2f; staggered, one finish + sgd %7.2f (%5.0fk), sgd folded %7.2f (%5.0fk); "
                  "parts alone, summed %7.2f\n", K, n, whole, n / whole * 1e3, whole_fold, split_step, staggered,
                  shared_step, n / shared_step * 1e3, shared_fold, n / shared_fold * 1e3, alone);
      // The checks: the shared parts' gradients against the whole pass's (the same sums in
      // another order), and one folded update against the separate one (the same bits).
      std::vector<float> want(dk::kParams), got(dk::kParams), p0(dk::kParams), p_sep(dk::kParams), p_fold(dk::kParams);
      dk::lenet5_step(step_of(n), nullptr);
      CK(cudaMemcpy(want.data(), grads, dk::kParams * 4, cudaMemcpyDeviceToHost));
      CK(cudaMemset(grads, 0xff, dk::kParams * 4));
      enqueue_parts(true, Join::Shared, nullptr);  // lr 0: the parameters stay
      CK(cudaDeviceSynchronize());
      CK(cudaMemcpy(got.data(), grads, dk::kParams * 4, cudaMemcpyDeviceToHost));
      double num = 0, den = 0;
      for (int q = 0; q < dk::kParams; ++q) num += double(got[q] - want[q]) * (got[q] - want[q]), den += double(want[q]) * want[q];
      CK(cudaMemcpy(p0.data(), params, dk::kParams * 4, cudaMemcpyDeviceToHost));
      CK(cudaMemset(velocity, 0, dk::kParams * 4));
      dk::lenet5_step(step_of(n), nullptr);
      sgd(nullptr, 0.05f);
      CK(cudaMemcpy(p_sep.data(), params, dk::kParams * 4, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(params, p0.data(), dk::kParams * 4, cudaMemcpyHostToDevice));
      CK(cudaMemset(velocity, 0, dk::kParams * 4));
      whole_folded(nullptr, 0.05f);
      CK(cudaMemcpy(p_fold.data(), params, dk::kParams * 4, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(params, p0.data(), dk::kParams * 4, cudaMemcpyHostToDevice));
      CK(cudaMemset(velocity, 0, dk::kParams * 4));
      const double rel = std::sqrt(num / std::max(den, 1e-300));
      const bool fold_same = p_sep == p_fold, shared_ok = rel < 1e-5;
      all_ok = all_ok && fold_same && shared_ok;
      std::printf("split %d n=%5d check: one finish's gradients against the whole pass's %.1e (%s); folded update %s\n",
                  K, n, rel, shared_ok ? "ok" : "WRONG", fold_same ? "the same bits" : "NOT the same bits");
    }
  }
  return all_ok ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "probe: %s\n", e.what());
  return 2;
}
