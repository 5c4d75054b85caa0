// The table of layer types (io/layer_types.h) and their shape rules. The rules follow PyTorch's
// modules (nn.Conv2d, nn.MaxPool2d with floor output sizes, nn.Linear over the flattened input);
// their problem texts are what the layers report, so they are part of the error messages.
#include "io/layer_types.h"

namespace dptrain {

std::string shape_size_problem(Dims d) {
  if (d.c > kMaxSide || d.h > kMaxSide || d.w > kMaxSide)
    return "shape " + to_string(d) + " has a side over " + std::to_string(kMaxSide);
  if (d.count() > kMaxValuesPerSample)
    return "shape " + to_string(d) + " holds " + std::to_string(d.count()) + " values per sample, more than " +
           std::to_string(kMaxValuesPerSample);
  return {};
}

namespace {

/// A window's output side, computed in 64 bits (the padded side of a large padding overflows an
/// int); at most 0 where the window does not fit.
int64_t window_output(int side, int kernel, int stride, int padding) {
  const int64_t padded = int64_t{side} + 2 * int64_t{padding};
  if (padded < kernel) return 0;
  return (padded - kernel) / stride + 1;
}

std::string too_many_parameters(int64_t count) {
  return "has " + std::to_string(count) + " parameters, more than " + std::to_string(kMaxLayerParameters);
}

LayerShape conv2d_shape(const LayerConfig& c, Dims in) {
  if (c.out_channels <= 0) return {{}, "out_channels must be > 0"};
  if (c.kernel <= 0) return {{}, "kernel must be > 0"};
  if (c.stride <= 0) return {{}, "stride must be > 0"};
  if (c.padding < 0) return {{}, "padding must be >= 0"};
  const int64_t oh = window_output(in.h, c.kernel, c.stride, c.padding);
  const int64_t ow = window_output(in.w, c.kernel, c.stride, c.padding);
  if (oh <= 0 || ow <= 0)
    return {{}, "kernel " + std::to_string(c.kernel) + " does not fit the input " + to_string(in) + " with padding " +
                    std::to_string(c.padding)};
  if (oh > kMaxSide || ow > kMaxSide || c.out_channels > kMaxSide)
    return {{}, "output " + std::to_string(c.out_channels) + "x" + std::to_string(oh) + "x" + std::to_string(ow) +
                    " has a side over " + std::to_string(kMaxSide)};
  const int64_t parameters = int64_t{c.out_channels} * in.c * c.kernel * c.kernel + c.out_channels;
  if (c.kernel > kMaxSide || parameters > kMaxLayerParameters) return {{}, too_many_parameters(parameters)};
  return {Dims{c.out_channels, static_cast<int>(oh), static_cast<int>(ow)}, {}};
}

LayerShape relu_shape(const LayerConfig&, Dims in) { return {in, {}}; }

LayerShape maxpool2d_shape(const LayerConfig& c, Dims in) {
  if (c.kernel <= 0) return {{}, "kernel must be > 0"};
  if (c.stride <= 0) return {{}, "stride must be > 0"};
  if (c.padding < 0 || 2 * c.padding > c.kernel) return {{}, "padding must be between 0 and half the kernel"};
  // PoolSpec::pooled (layers/layer.h), which the fused kernels use, is the same floor division.
  const int64_t oh = window_output(in.h, c.kernel, c.stride, c.padding);
  const int64_t ow = window_output(in.w, c.kernel, c.stride, c.padding);
  if (oh <= 0 || ow <= 0) return {{}, "kernel " + std::to_string(c.kernel) + " does not fit the input " + to_string(in)};
  return {Dims{in.c, static_cast<int>(oh), static_cast<int>(ow)}, {}};
}

LayerShape dropout_shape(const LayerConfig& c, Dims in) {
  if (!(c.p >= 0.0 && c.p < 1.0)) return {{}, "p must be in [0, 1)"};
  return {in, {}};
}

LayerShape flatten_shape(const LayerConfig&, Dims in) { return {Dims{static_cast<int>(in.count()), 1, 1}, {}}; }

LayerShape linear_shape(const LayerConfig& c, Dims in) {
  if (c.out_features <= 0) return {{}, "out_features must be > 0"};
  if (c.out_features > kMaxValuesPerSample)
    return {{}, "out_features " + std::to_string(c.out_features) + " is more than " + std::to_string(kMaxValuesPerSample)};
  const int64_t parameters = in.count() * c.out_features + c.out_features;
  if (parameters > kMaxLayerParameters) return {{}, too_many_parameters(parameters)};
  return {Dims{c.out_features, 1, 1}, {}};
}

// nn.AvgPool2d(kernel, stride, padding) with its defaults count_include_pad=True, ceil_mode=False:
// floor output sizes, so every window ends inside the padded plane and its divisor is kernel^2.
LayerShape avgpool2d_shape(const LayerConfig& c, Dims in) {
  if (c.kernel <= 0) return {{}, "kernel must be > 0"};
  if (c.stride <= 0) return {{}, "stride must be > 0"};
  if (c.padding < 0 || 2 * c.padding > c.kernel) return {{}, "padding must be between 0 and half the kernel"};
  const int64_t oh = window_output(in.h, c.kernel, c.stride, c.padding);
  const int64_t ow = window_output(in.w, c.kernel, c.stride, c.padding);
  if (oh <= 0 || ow <= 0)
    return {{}, "kernel " + std::to_string(c.kernel) + " does not fit the input " + to_string(in) + " with padding " +
                    std::to_string(c.padding)};
  return {Dims{in.c, static_cast<int>(oh), static_cast<int>(ow)}, {}};
}

// nn.AdaptiveAvgPool2d(1): the mean of each channel's plane.
LayerShape global_avgpool_shape(const LayerConfig&, Dims in) { return {Dims{in.c, 1, 1}, {}}; }
LayerShape batchnorm_shape(const LayerConfig& c, Dims in, bool one_d) {
  if (one_d && (in.h != 1 || in.w != 1))
    return {{}, "batchnorm1d normalises features (Cx1x1, after a linear layer), but its input is " + to_string(in) +
                    " (use batchnorm2d after a convolution)"};
  if (!(c.momentum >= 0.0 && c.momentum <= 1.0)) return {{}, "momentum must be in [0, 1]"};
  if (!(c.eps > 0.0)) return {{}, "eps must be > 0"};
  if (c.sync != 0 && c.sync != 1) return {{}, "sync must be 0 (ghost batches of group_size) or 1 (whole global batch)"};
  if (c.sync == 0 && c.group_size <= 0) return {{}, "group_size must be > 0 (or set sync: 1)"};
  if (c.sync == 0 && one_d && c.group_size < 2)
    return {{}, "group_size must be >= 2: a group of one sample has one value per feature and no variance"};
  return {in, {}};
}
LayerShape batchnorm2d_shape(const LayerConfig& c, Dims in) { return batchnorm_shape(c, in, false); }
LayerShape batchnorm1d_shape(const LayerConfig& c, Dims in) { return batchnorm_shape(c, in, true); }

constexpr LayerField kConv2dFields[] = {
    {.key = "out_channels", .int_member = &LayerConfig::out_channels},
    {.key = "kernel", .int_member = &LayerConfig::kernel},
    {.key = "stride", .int_member = &LayerConfig::stride, .zero_means = 1},
    {.key = "padding", .int_member = &LayerConfig::padding},
};
constexpr LayerField kMaxPool2dFields[] = {
    {.key = "kernel", .int_member = &LayerConfig::kernel},
    {.key = "stride", .int_member = &LayerConfig::stride, .zero_means_field = "kernel"},
    {.key = "padding", .int_member = &LayerConfig::padding},
};
constexpr LayerField kAvgPool2dFields[] = {
    {.key = "kernel", .int_member = &LayerConfig::kernel},
    {.key = "stride", .int_member = &LayerConfig::stride, .zero_means_field = "kernel"},
    {.key = "padding", .int_member = &LayerConfig::padding},
};
constexpr LayerField kDropoutFields[] = {
    {.key = "p", .float_member = &LayerConfig::p},
};
constexpr LayerField kLinearFields[] = {
    {.key = "out_features", .int_member = &LayerConfig::out_features},
};

// Float fields' absent value is the LayerConfig initialiser (0.1, 1e-5): see io/config.h.
constexpr LayerField kBatchNormFields[] = {
    {.key = "momentum", .float_member = &LayerConfig::momentum},
    {.key = "eps", .float_member = &LayerConfig::eps},
    {.key = "group_size", .int_member = &LayerConfig::group_size},
    {.key = "sync", .int_member = &LayerConfig::sync},
};

constexpr LayerType kLayerTypes[] = {
    {"conv2d", kConv2dFields, conv2d_shape, "square-kernel 2-D convolution with bias (nn.Conv2d)"},
    {"relu", {}, relu_shape, "max(x, 0), element by element"},
    {"maxpool2d", kMaxPool2dFields, maxpool2d_shape, "square-window max pooling (nn.MaxPool2d)"},
    {"dropout", kDropoutFields, dropout_shape, "inverted dropout with probability p, identity in evaluation"},
    {"flatten", {}, flatten_shape, "C x H x W reshaped to (C*H*W) x 1 x 1"},
    {"linear", kLinearFields, linear_shape, "y = x W^T + b over the flattened input (nn.Linear)"},
    {"avgpool2d", kAvgPool2dFields, avgpool2d_shape,
     "square-window average pooling, padding counted as zeros (nn.AvgPool2d)"},
    {"global_avgpool", {}, global_avgpool_shape, "the mean of each channel's plane, C x 1 x 1 (nn.AdaptiveAvgPool2d(1))"},
    {"batchnorm2d", kBatchNormFields, batchnorm2d_shape,
     "per-channel batch normalisation over ghost groups or the global batch (nn.BatchNorm2d)"},
    {"batchnorm1d", kBatchNormFields, batchnorm1d_shape,
     "per-feature batch normalisation of Cx1x1 inputs (nn.BatchNorm1d)"},
};

}  // namespace

std::span<const LayerType> layer_types() { return kLayerTypes; }

const LayerType* find_layer_type(std::string_view name) {
  for (const LayerType& t : kLayerTypes)
    if (t.name == name) return &t;
  return nullptr;
}

std::string layer_type_names() {
  std::string names;
  for (const LayerType& t : kLayerTypes) names += (names.empty() ? "" : ", ") + std::string(t.name);
  return names;
}

LayerConfig with_defaults(const LayerType& type, LayerConfig config) {
  for (const LayerField& f : type.fields) {
    if (f.int_member == nullptr || config.*f.int_member != 0) continue;
    if (f.zero_means_field.empty()) {
      config.*f.int_member = f.zero_means;
      continue;
    }
    for (const LayerField& from : type.fields)
      if (from.key == f.zero_means_field) config.*f.int_member = config.*from.int_member;
  }
  return config;
}

}  // namespace dptrain
