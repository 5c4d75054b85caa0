// dptrain_conv_survey: times every cuDNN algorithm for every convolution of a model (forward,
// backward-data, backward-filter) in NCHW and NHWC, with FMA-only (float32) and TF32 math, and prints
// one JSON line per (layer, direction, layout, math, algorithm). It answers "which algorithm and
// layout would make the step faster", which dptrain's own plan (deterministic algorithms, NCHW)
// cannot. Where kernels/conv_tiled serves a convolution, its kernels and the fastest FMA-only NCHW cuDNN algorithm
// of each direction are also timed inside a CUDA graph (algo "tiled" and "cudnn-best-graph"), which leaves out the
// host's launch overhead. Usage: dptrain_conv_survey [--config FILE] [--batch N] [--reps N]
#include <CLI/CLI.hpp>
#include <cudnn.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/cuda_check.h"
#include "layers/cuda/graph_timer.h"
#include "core/cuda_raii.h"
#include "io/config.h"
#include "kernels/conv_kernels.h"
#include "kernels/conv_mma.h"
#include "kernels/conv_tiled.h"
#include "layers/conv2d.h"
#include "layers/layer_factory.h"

namespace dptrain {
namespace {

struct ConvShape {
  std::string name;
  Dims in, out;
  int kernel, stride, padding;
};

/// The model's convolutions with their input and output dims (built as CPU layers, never run).
std::vector<ConvShape> conv_shapes(const ModelConfig& model) {
  std::vector<ConvShape> shapes;
  Dims dims = model.input;
  for (size_t i = 0; i < model.layers.size(); ++i) {
    auto layer = make_layer<float>(model.layers[i], static_cast<int>(i), dims, Device::Cpu);
    if (auto* conv = dynamic_cast<Conv2dLayer<float>*>(layer.get()))
      shapes.push_back({conv->name(), dims, conv->output_dims(), conv->kernel(), conv->stride(),
                        conv->padding()});
    dims = layer->output_dims();
  }
  return shapes;
}

/// Descriptors of one convolution in one layout and math mode.
struct ConvDescs {
  CudnnTensorDesc x, y;
  CudnnFilterDesc w;
  CudnnConvDesc conv;

  ConvDescs(const ConvShape& s, int n, cudnnTensorFormat_t layout, bool tf32) {
    cudnnTensorDescriptor_t t = nullptr;
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&t));
    x = CudnnTensorDesc(t);
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(t, layout, CUDNN_DATA_FLOAT, n, s.in.c, s.in.h, s.in.w));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&t));
    y = CudnnTensorDesc(t);
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(t, layout, CUDNN_DATA_FLOAT, n, s.out.c, s.out.h, s.out.w));
    cudnnFilterDescriptor_t f = nullptr;
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&f));
    w = CudnnFilterDesc(f);
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(f, CUDNN_DATA_FLOAT, layout, s.out.c, s.in.c, s.kernel, s.kernel));
    cudnnConvolutionDescriptor_t c = nullptr;
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c));
    conv = CudnnConvDesc(c);
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(c, s.padding, s.padding, s.stride, s.stride, 1, 1,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionMathType(c, tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
  }
};

/// Mean microseconds of one launch of op, over reps launches queued back to back.
double time_us(cudaStream_t stream, int reps, const std::function<cudnnStatus_t()>& op) {
  for (int i = 0; i < 3; ++i) CUDNN_CHECK(op());
  CudaEvent start = make_event(true), stop = make_event(true);
  CUDA_CHECK(cudaEventRecord(start, stream));
  for (int i = 0; i < reps; ++i) CUDNN_CHECK(op());
  CUDA_CHECK(cudaEventRecord(stop, stream));
  CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  return 1000.0 * ms / reps;
}

/// Graph timings here: 20 calls captured back to back, 20 replays (more than a plan's, for a steadier median).
// Every replay counted (settled 0): the survey reports times, it does not only choose.
constexpr GraphTiming kSurveyTiming{20, 3, 20, std::numeric_limits<double>::infinity(), 0.0};

struct Survey {
  cudnnHandle_t h;
  cudaStream_t stream;
  int batch, reps;
  Buffer<float> x, y, w, b, ws;

  void print(const ConvShape& s, const char* direction, const char* layout, bool tf32, const nlohmann::json& algo,
             cudnnDeterminism_t det, size_t memory, double us, double flops) {
    nlohmann::json j = {{"layer", s.name}, {"direction", direction}, {"layout", layout},
                        {"math", tf32 ? "tf32" : "fma"}, {"algo", algo},
                        {"deterministic", det == CUDNN_DETERMINISTIC}, {"workspace_mb", memory / 1048576.0},
                        {"us", us}, {"tflops", flops / us * 1e-6}, {"batch", batch}};
    std::cout << j.dump() << "\n" << std::flush;
  }

  void run(const ConvShape& s, cudnnTensorFormat_t layout, bool tf32) {
    const ConvDescs d(s, batch, layout, tf32);
    const char* lname = layout == CUDNN_TENSOR_NCHW ? "nchw" : "nhwc";
    const double flops = 2.0 * batch * s.out.c * s.out.h * s.out.w * s.in.c * s.kernel * s.kernel;
    constexpr float one = 1.0f, zero = 0.0f;
    constexpr int kMax = 16;
    int found_f = 0, found_bd = 0, found_bf = 0;
    cudnnConvolutionFwdAlgoPerf_t f[kMax];
    CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(h, d.x, x.data(), d.w, w.data(), d.conv, d.y, y.data(), kMax,
                                                       &found_f, f, ws.data(), ws.size() * sizeof(float)));
    for (int i = 0; i < found_f; ++i) {
      if (f[i].status != CUDNN_STATUS_SUCCESS) continue;
      const double us = time_us(stream, reps, [&] {
        return cudnnConvolutionForward(h, &one, d.x, x.data(), d.w, w.data(), d.conv, f[i].algo, ws.data(),
                                       f[i].memory, &zero, d.y, y.data());
      });
      print(s, "forward", lname, tf32, f[i].algo, f[i].determinism, f[i].memory, us, flops);
    }
    cudnnConvolutionBwdDataAlgoPerf_t bd[kMax];
    CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(h, d.w, w.data(), d.y, y.data(), d.conv, d.x, x.data(),
                                                            kMax, &found_bd, bd, ws.data(), ws.size() * sizeof(float)));
    for (int i = 0; i < found_bd; ++i) {
      if (bd[i].status != CUDNN_STATUS_SUCCESS) continue;
      const double us = time_us(stream, reps, [&] {
        return cudnnConvolutionBackwardData(h, &one, d.w, w.data(), d.y, y.data(), d.conv, bd[i].algo, ws.data(),
                                            bd[i].memory, &zero, d.x, x.data());
      });
      print(s, "backward_data", lname, tf32, bd[i].algo, bd[i].determinism, bd[i].memory, us, flops);
    }
    cudnnConvolutionBwdFilterAlgoPerf_t bf[kMax];
    CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, d.x, x.data(), d.y, y.data(), d.conv, d.w, w.data(),
                                                              kMax, &found_bf, bf, ws.data(), ws.size() * sizeof(float)));
    for (int i = 0; i < found_bf; ++i) {
      if (bf[i].status != CUDNN_STATUS_SUCCESS) continue;
      const double us = time_us(stream, reps, [&] {
        return cudnnConvolutionBackwardFilter(h, &one, d.x, x.data(), d.y, y.data(), d.conv, bf[i].algo, ws.data(),
                                              bf[i].memory, &zero, d.w, w.data());
      });
      print(s, "backward_filter", lname, tf32, bf[i].algo, bf[i].determinism, bf[i].memory, us, flops);
    }
    if (layout == CUDNN_TENSOR_NCHW && !tf32 && kernels::direct_conv_fits(s.in.c, s.kernel)) run_direct(s, flops);
    const kernels::ConvGeometry g{batch, s.in.c, s.in.h, s.in.w, s.out.c, s.out.h, s.out.w, s.kernel, s.stride,
                                  s.padding};
    if (layout == CUDNN_TENSOR_NCHW && kernels::mma_conv_fits(g)) run_mma(s, g, flops, tf32);
    if (layout != CUDNN_TENSOR_NCHW || tf32 || !kernels::tiled_conv_fits(g)) return;
    run_tiled(s, g, flops);
    // Find*Ex (above) lists the algorithms fastest first; the first that ran is the best.
    const auto best = [](const auto* perf, int count) {
      for (int i = 0; i < count; ++i)
        if (perf[i].status == CUDNN_STATUS_SUCCESS) return perf + i;
      return static_cast<decltype(perf)>(nullptr);
    };
    if (const auto* p = best(f, found_f))
      run_cudnn_graph(s, "forward", p->algo, p->determinism, p->memory, flops, [&, p] {
        CUDNN_CHECK(cudnnConvolutionForward(h, &one, d.x, x.data(), d.w, w.data(), d.conv, p->algo, ws.data(),
                                            p->memory, &zero, d.y, y.data()));
      });
    if (const auto* p = best(bd, found_bd))
      run_cudnn_graph(s, "backward_data", p->algo, p->determinism, p->memory, flops, [&, p] {
        CUDNN_CHECK(cudnnConvolutionBackwardData(h, &one, d.w, w.data(), d.y, y.data(), d.conv, p->algo, ws.data(),
                                                 p->memory, &zero, d.x, x.data()));
      });
    if (const auto* p = best(bf, found_bf))
      run_cudnn_graph(s, "backward_filter", p->algo, p->determinism, p->memory, flops, [&, p] {
        CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &one, d.x, x.data(), d.y, y.data(), d.conv, p->algo, ws.data(),
                                                   p->memory, &zero, d.w, w.data()));
      });
  }

  /// kernels/conv_tiled, timed in a CUDA graph (forward without ReLU; the filter row includes the bias gradient).
  void run_tiled(const ConvShape& s, const kernels::ConvGeometry& g, double flops) {
    const size_t scratch = kernels::tiled_conv_scratch(g);
    if (scratch > ws.size() * sizeof(float)) throw CudaError("conv_survey: workspace too small for the tiled kernels");
    double us = graph_time_us(stream, [&] {
      kernels::tiled_conv_forward(x.data(), w.data(), b.data(), y.data(), false, g, stream);
    }, kSurveyTiming);
    print(s, "forward", "nchw", false, "tiled", CUDNN_DETERMINISTIC, 0, us, flops);
    us = graph_time_us(stream, [&] {
      kernels::tiled_conv_backward_data(y.data(), w.data(), x.data(), ws.data(), g, stream);
    }, kSurveyTiming);
    print(s, "backward_data", "nchw", false, "tiled", CUDNN_DETERMINISTIC, scratch, us, flops);
    us = graph_time_us(stream, [&] {
      kernels::tiled_conv_filter_grad(x.data(), y.data(), w.data(), b.data(), ws.data(), g, stream);
    }, kSurveyTiming);
    print(s, "backward_filter", "nchw", false, "tiled", CUDNN_DETERMINISTIC, scratch, us, flops);
  }

  /// kernels/conv_mma (3xTF32, or TF32 with tf32), timed like the tiled kernels.
  void run_mma(const ConvShape& s, const kernels::ConvGeometry& g, double flops, bool tf32) {
    const size_t scratch = kernels::mma_conv_scratch(g);
    if (scratch > ws.size() * sizeof(float)) throw CudaError("conv_survey: workspace too small for the mma kernels");
    const kernels::MmaMath math = tf32 ? kernels::MmaMath::Tf32 : kernels::MmaMath::SplitTf32;
    const char* algo = tf32 ? "mma-tf32" : "mma-3xtf32";
    double us = graph_time_us(stream, [&] {
      kernels::mma_conv_forward(x.data(), w.data(), b.data(), y.data(), false, ws.data(), math, g, stream);
    }, kSurveyTiming);
    print(s, "forward", "nchw", tf32, algo, CUDNN_DETERMINISTIC, scratch, us, flops);
    us = graph_time_us(stream, [&] {
      kernels::mma_conv_backward_data(y.data(), w.data(), x.data(), ws.data(), math, g, stream);
    }, kSurveyTiming);
    print(s, "backward_data", "nchw", tf32, algo, CUDNN_DETERMINISTIC, scratch, us, flops);
    us = graph_time_us(stream, [&] {
      kernels::mma_conv_filter_grad(x.data(), y.data(), w.data(), b.data(), ws.data(), math, g, stream);
    }, kSurveyTiming);
    print(s, "backward_filter", "nchw", tf32, algo, CUDNN_DETERMINISTIC, scratch, us, flops);
  }

  /// One cuDNN algorithm timed the same graph way as the tiled kernels; a capture failure is reported, not fatal.
  void run_cudnn_graph(const ConvShape& s, const char* direction, int algo, cudnnDeterminism_t det, size_t memory,
                       double flops, const std::function<void()>& op) {
    try {
      const double us = graph_time_us(stream, op, kSurveyTiming);
      print(s, direction, "nchw", false, "cudnn-best-graph", det, memory, us, flops);
      std::cerr << "cudnn-best-graph " << s.name << " " << direction << ": cuDNN algorithm " << algo << "\n";
    } catch (const std::exception& e) {
      std::cerr << "cudnn-best-graph " << s.name << " " << direction << " (algorithm " << algo
                << ") not captured: " << e.what() << "\n";
    }
  }

  /// dptrain's own kernels for short reductions (algo -1; the filter row includes the bias gradient).
  void run_direct(const ConvShape& s, double flops) {
    const kernels::ConvGeometry g{batch,   s.in.c,   s.in.h,   s.in.w,   s.out.c,
                                  s.out.h, s.out.w, s.kernel, s.stride, s.padding};
    const size_t scratch = kernels::conv_direct_filter_grad_scratch(g);
    double us = time_us(stream, reps, [&] {
      kernels::conv_direct_forward(x.data(), w.data(), b.data(), y.data(), false, g, stream);
      return CUDNN_STATUS_SUCCESS;
    });
    print(s, "forward", "nchw", false, -1, CUDNN_DETERMINISTIC, 0, us, flops);
    us = time_us(stream, reps, [&] {
      kernels::conv_direct_filter_grad(x.data(), y.data(), nullptr, w.data(), b.data(), ws.data(), g, stream);
      return CUDNN_STATUS_SUCCESS;
    });
    print(s, "backward_filter", "nchw", false, -1, CUDNN_DETERMINISTIC, scratch, us, flops);
  }
};

int survey(const std::string& config_path, int batch, int reps) {
  const Config config = load_config(config_path);
  const std::vector<ConvShape> shapes = conv_shapes(config.model);
  size_t largest = 0;
  for (const ConvShape& s : shapes) largest = std::max({largest, size_t(s.in.count()), size_t(s.out.count())});
  cudnnHandle_t raw = nullptr;
  CUDNN_CHECK(cudnnCreate(&raw));
  CudnnHandle handle(raw);
  CudaStream stream = make_stream();
  CUDNN_CHECK(cudnnSetStream(handle, stream));
  constexpr size_t kWorkspaceFloats = size_t{256} << 18;  // 256 MiB
  Survey sv{handle, stream, batch, reps, Buffer<float>(Device::Cuda, largest * batch),
            Buffer<float>(Device::Cuda, largest * batch), Buffer<float>(Device::Cuda, largest),
            Buffer<float>(Device::Cuda, largest), Buffer<float>(Device::Cuda, kWorkspaceFloats)};
  sv.x.zero();
  sv.y.zero();
  sv.w.zero();
  sv.b.zero();
  for (const ConvShape& s : shapes)
    for (cudnnTensorFormat_t layout : {CUDNN_TENSOR_NCHW, CUDNN_TENSOR_NHWC})
      for (bool tf32 : {false, true}) sv.run(s, layout, tf32);
  return 0;
}

}  // namespace
}  // namespace dptrain

int main(int argc, char** argv) {
  CLI::App app{"Times every cuDNN convolution algorithm for a model's convolutions"};
  std::string config = "configs/mnist_cnn.yaml";
  int batch = 64, reps = 50;
  app.add_option("--config", config, "Model config")->check(CLI::ExistingFile);
  app.add_option("--batch", batch, "Batch size")->check(CLI::PositiveNumber);
  app.add_option("--reps", reps, "Launches timed per algorithm")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  try {
    return dptrain::survey(config, batch, reps);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dptrain_conv_survey: error: %s\n", e.what());
    return 1;
  }
}
