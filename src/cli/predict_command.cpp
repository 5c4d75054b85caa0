// dptrain predict: class and class probabilities for greyscale PGM images of the model's input
// size, with the class names of data.classes when the config has them.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/device_ops.h"
#include "core/error.h"
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
  if (dims.c != 1)
    throw InputError(a.checkpoint, "the model takes " + to_string(dims) + " inputs; predict reads greyscale (1-channel) images");
  const std::vector<std::string>& names = loaded.config.data.classes;
  // "7 (seven)" with data.classes, "7" without.
  const auto label = [&names](int c) {
    return names.empty() ? std::to_string(c) : std::to_string(c) + " (" + names[static_cast<size_t>(c)] + ")";
  };
  for (const std::string& path : a.images) {
    const std::vector<uint8_t> pixels = read_pgm(path, dims.h, dims.w);
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
    std::printf("%s: class %s (p=%.4f)  probabilities:", path.c_str(), label(best).c_str(), p[static_cast<size_t>(best)] / z);
    for (int c = 0; c < k; ++c)
      std::printf(" %s:%.4f", names.empty() ? std::to_string(c).c_str() : names[static_cast<size_t>(c)].c_str(),
                  p[static_cast<size_t>(c)] / z);
    std::printf("\n");
    if (!startup.finished()) startup.mark("first_prediction"), startup.finish();
  }
  if (a.profile) std::fputs(startup.table("start-up until the first prediction").c_str(), stdout);
  return 0;
}

}  // namespace

Command add_predict(CLI::App& app) {
  auto args = std::make_shared<PredictArgs>();
  CLI::App* sub = app.add_subcommand("predict", "Classify greyscale PGM images (the model's input size)");
  sub->add_option("--checkpoint", args->checkpoint, "Weights file or checkpoint (.safetensors)")->required();
  sub->add_option("images", args->images, "PGM images (P5 or P2, the model's input size, e.g. 28x28)")->required();
  sub->add_flag("--profile", args->profile, "Print where the time went from process start to the first prediction");
  return [args] { return run_predict(*args); };
}

}  // namespace dptrain::cli
