// The run configuration: a YAML file (configs/*.yaml) checked into typed structs.
//
// Every key is known: an unknown key, a value of the wrong type or out of range is an InputError
// naming the file and the dotted key. `--set a.b=value` overrides are applied to the YAML before
// checking, so they are validated the same way. The resolved config is written back as YAML with
// every default filled in, so a run folder says exactly what ran.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dptrain {

/// One entry of model.layers. Which fields a type reads and writes, and their defaults, are its
/// entry in io/layer_types.h; fields not used by a layer's type must be absent in the YAML.
struct LayerConfig {
  std::string type;  ///< a name in layer_types() (io/layer_types.h)
  std::string name;  ///< state_dict prefix; defaults to "<type><k>" (k counts layers of that type)
  int out_channels = 0;  ///< conv2d
  int kernel = 0;        ///< conv2d, maxpool2d (square)
  int stride = 0;        ///< conv2d (default 1), maxpool2d (default = kernel)
  int padding = 0;       ///< conv2d, maxpool2d
  int out_features = 0;  ///< linear
  double p = 0.0;        ///< dropout probability of zeroing
  // batchnorm2d, batchnorm1d. Unlike the fields above, an absent key takes the initialiser here
  // (PyTorch's defaults), so an explicit 0 keeps its meaning: momentum 0 freezes the running
  // statistics; eps, group_size <= 0 are errors of the shape rule.
  double momentum = 0.1;  ///< running = (1 - momentum) * running + momentum * batch statistic
  double eps = 1e-5;      ///< added to the variance before its square root
  int group_size = 32;    ///< ghost-batch size: samples per group of statistics (sync: 0)
  int sync = 0;           ///< 1: statistics over the whole global batch, all-reduced in forward
};

/// model.num_classes is in 2..kMaxClasses (ImageNet's 1000; the loss kernels are tested up to it).
inline constexpr int kMaxClasses = 1000;

struct ModelConfig {
  Dims input{1, 28, 28};
  int num_classes = 10;
  std::vector<LayerConfig> layers;
};

/// data.augment: random transforms of the training images (core/augment.h); every field 0 is off.
struct AugmentConfig {
  double rotation = 0;     ///< degrees, 0..180: angle uniform in [-rotation, rotation]
  double scale = 0;        ///< fraction, 0..<1: zoom factor uniform in [1 - scale, 1 + scale]
  double translation = 0;  ///< pixels, >= 0: shift uniform in [-translation, translation] per axis
  double shear = 0;        ///< degrees, 0..<90: x-shear angle uniform in [-shear, shear]
  double erasing = 0;      ///< probability 0..1 of erasing one rectangle (torchvision RandomErasing)
  double fill = 0;         ///< raw pixel value 0..255 (before normalisation) outside the image and erased
  bool enabled() const { return rotation > 0 || scale > 0 || translation > 0 || shear > 0 || erasing > 0; }
};

struct DataConfig {
  std::string dir = "data/mnist";
  double mean = 0.1307;
  double std = 0.3081;
  AugmentConfig augment;             ///< training batches only, never evaluation
  std::vector<std::string> classes;  ///< optional class names (model.num_classes of them), `predict` prints them
};

struct OptimizerConfig {
  std::string type = "adadelta";  ///< sgd | adam | adamw | adadelta
  double lr = 1.0;
  double momentum = 0.0;  ///< sgd
  double dampening = 0.0; ///< sgd
  bool nesterov = false;  ///< sgd
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999;  ///< adam, adamw
  double eps = 1e-6;                  ///< adam/adamw (default 1e-8 there), adadelta
  double rho = 0.9;                   ///< adadelta
};

struct ScheduleConfig {
  std::string type = "constant";  ///< constant | step | cosine | onecycle | linear
  int step_size = 1;              ///< step: epochs between decays
  double gamma = 0.1;             ///< step: decay factor
  double min_lr = 0.0;            ///< cosine: floor
  int64_t warmup_steps = 0;       ///< linear warm-up from 0 over this many steps (any type but onecycle)
  // onecycle (torch.optim.lr_scheduler.OneCycleLR, three_phase=False; its defaults)
  double max_lr = 0.0;            ///< required (> 0); train.optimizer.lr is not used
  double pct_start = 0.3;
  double div_factor = 25.0;       ///< initial lr = max_lr / div_factor
  double final_div_factor = 1e4;  ///< final lr = initial lr / final_div_factor
  std::string anneal = "cos";     ///< cos | linear
  bool cycle_momentum = true;     ///< cycle SGD's momentum or Adam's beta1 inversely to the lr
  double base_momentum = 0.85, max_momentum = 0.95;
  // linear (torch.optim.lr_scheduler.LinearLR, stepped every step; defaults make it a decay to 0)
  double start_factor = 1.0, end_factor = 0.0;
  int64_t total_iters = 0;        ///< 0: the planned run (epochs x steps per epoch)
};

struct TrainConfig {
  int batch_size = 64;       ///< global batch, split over ranks
  int batch_per_rank = 0;    ///< if set, overrides batch_size = batch_per_rank * ranks (weak scaling)
  int epochs = 14;
  int64_t max_steps = 0;     ///< 0: no limit
  uint64_t seed = 1;
  int eval_batch_size = 1000;
  std::string precision = "float32";  ///< float32 | tf32
  bool cuda_graph = true;
  bool cudnn_benchmark = true;
  bool deterministic = true;     ///< false: cuDNN may use non-deterministic (atomic) algorithms
  bool exact_convolutions = false;  ///< true: no FFT/Winograd convolutions (the CPU's rounding, to float32)
  bool check_numerics = false;  ///< debug: stop at the first NaN/Inf in any layer (train/numerics_checker.h)
  int log_every = 50;        ///< plain-text progress line period (steps) when not on a terminal
  std::string plan_cache = "auto";  ///< auto | off | PATH (a recorded plan, read only): io/plan_cache.h
  double label_smoothing = 0.0;  ///< softmax cross-entropy target (1-e)*onehot + e/C (PyTorch's)
  int eval_every = 1;  ///< test pass every this many epochs; 0: only at the end of the run (which always has one)
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
};

struct CommConfig {
  std::string backend = "auto";  ///< auto | nccl | mpi
  double bucket_mb = 1.0;
  bool overlap = true;
  double timeout_s = 300.0;
};

struct CheckpointConfig {
  int64_t every_steps = 0;  ///< 0: only at epoch ends and when the run ends
  bool every_epoch = true;
  int keep = 3;
};

struct Config {
  std::string name;    ///< config name: "mnist_cnn" for configs/mnist_cnn.yaml unless set
  std::string source;  ///< the file it came from, for messages
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  CommConfig comm;
  CheckpointConfig checkpoint;
};

/// Loads `path`, applies "dotted.key=value" overrides, checks everything. Throws InputError.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
/// Parses YAML text (for checkpoints, which carry their config). `source` names it in errors.
Config parse_config(const std::string& yaml_text, const std::string& source,
                    const std::vector<std::string>& overrides = {});
/// The resolved config as YAML, every default filled in; parse_config() of it gives it back.
std::string to_yaml(const Config& config);

}  // namespace dptrain
