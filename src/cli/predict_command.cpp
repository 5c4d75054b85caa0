// dptrain predict: class and class probabilities for 28x28 greyscale PGM images.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <vector>

#include "cli/commands.h"
#include "core/device_ops.h"
#include "data/pgm.h"
#include "train/runtime.h"
#include "train/startup_timer.h"
#include "train/weights.h"

namespace dptrain::cli {

namespace {

struct PredictArgs {
  std::string checkpoint;
  std::vector<std::string> images;
  bool profile = false;
};

int run_predict(const PredictArgs& a) {
  StartupTimer startup;
  startup.mark("command_line");
  DeviceContext ctx;  // a handful of images: the CPU is the quickest path (no device to start)
  const WeightsFile file = read_weights_file(a.checkpoint);
  startup.mark("weights_read");
  LoadedModel loaded = build_model(file, ctx, 1, /*forward_only=*/true);  // no backward buffers
  startup.mark("model_build");
  const DataConfig& norm = loaded.config.data;
  const Dims dims = loaded.model->input_dims();
  for (const std::string& path : a.images) {
    const std::vector<uint8_t> pixels = read_pgm(path);
    std::vector<float> x(pixels.size());
    const float mean = static_cast<float>(norm.mean), std = static_cast<float>(norm.std);
    for (size_t i = 0; i < pixels.size(); ++i) x[i] = (static_cast<float>(pixels[i]) * (1.0f / 255.0f) - mean) / std;
    const TensorView<const float> logits =
        loaded.model->forward(ctx, TensorView<const float>{x.data(), 1, dims}, Phase::Eval, StepInfo{});
    const int k = loaded.model->num_classes();
    const float top = *std::max_element(logits.data, logits.data + k);
    std::vector<double> p(static_cast<size_t>(k));
    double z = 0;
    for (int c = 0; c < k; ++c) z += p[static_cast<size_t>(c)] = std::exp(double(logits.data[c]) - top);
    const int best = static_cast<int>(std::max_element(logits.data, logits.data + k) - logits.data);
    std::printf("%s: class %d (p=%.4f)  probabilities:", path.c_str(), best, p[static_cast<size_t>(best)] / z);
    for (int c = 0; c < k; ++c) std::printf(" %d:%.4f", c, p[static_cast<size_t>(c)] / z);
    std::printf("\n");
    if (!startup.finished()) startup.mark("first_prediction"), startup.finish();
  }
  if (a.profile) std::fputs(startup.table("start-up until the first prediction").c_str(), stdout);
  return 0;
}

}  // namespace

Command add_predict(CLI::App& app) {
  auto args = std::make_shared<PredictArgs>();
  CLI::App* sub = app.add_subcommand("predict", "Classify 28x28 greyscale PGM images");
  sub->add_option("--checkpoint", args->checkpoint, "Weights file or checkpoint (.safetensors)")->required();
  sub->add_option("images", args->images, "PGM images (P5 or P2, 28x28)")->required();
  sub->add_flag("--profile", args->profile, "Print where the time went from process start to the first prediction");
  return [args] { return run_predict(*args); };
}

}  // namespace dptrain::cli
