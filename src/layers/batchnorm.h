// BatchNormLayer<T>: batchnorm2d (per channel of an NCHW conv output) and batchnorm1d (per feature
// of a Cx1x1 linear output), with PyTorch's semantics (nn.BatchNorm2d / nn.BatchNorm1d) and
// statistics that do not depend on the rank count.
//
// Parameters weight (init 1) and bias (init 0); state (Layer::state_specs, not parameters)
// running_mean (0), running_var (1), num_batches_tracked (I64 in files). Train mode normalises
// with batch statistics (biased variance) and folds them into the running statistics with
// `momentum`, using the unbiased variance; eval mode normalises with the running statistics.
//
// Which samples share statistics in train mode:
//  - ghost batches (sync 0, the default): fixed groups of group_size consecutive samples of the
//    global batch. A rank's shard starts on a group boundary (the trainer requires the per-rank
//    batch to be a multiple of group_size, and splits a short tail batch at group boundaries:
//    BatchPlan's `align`), so its groups are exactly those a one-rank run forms: group k of the
//    shard is samples [k g, min((k+1) g, n)). The epoch's short last batch ends in a partial group
//    of its own, whichever rank holds it. No communication in forward or backward.
//  - sync 1: one group, the whole global batch; forward all-reduces per-channel sums (two passes:
//    the mean, then the squared deviations), backward the sums of dy and dy * xhat.
// The running statistics move once per step, by the mean over all groups of the global batch of
// each group's mean and unbiased variance (sync: the one group's), so every rank holds the same
// values: ghost mode sums its groups' statistics over the ranks in end_train_step (one small
// all-reduce of 2C+1 values after the gradient exchange). A group of m = 1 value per channel has
// no unbiased variance; its biased one (0) is used. num_batches_tracked counts train steps.
#pragma once

#include <algorithm>

#include "io/config.h"
#include "layers/layer.h"
#include "layers/layer_error.h"

namespace dptrain {

template <typename T>
class BatchNormLayer : public Layer<T> {
 public:
  /// `type` is "batchnorm2d" or "batchnorm1d"; shape and field checks: its io/layer_types.cpp entry.
  BatchNormLayer(std::string_view type, const LayerConfig& c, int index, Dims in)
      : Layer<T>(c.name, index, in), type_(type == "batchnorm1d" ? "batchnorm1d" : "batchnorm2d") {
    const CheckedLayer checked = check_layer(type_, c, index, in);
    this->set_output_dims(checked.output);
    channels_ = in.c;
    spatial_ = in.h * in.w;
    momentum_ = checked.config.momentum;
    eps_ = checked.config.eps;
    sync_ = checked.config.sync == 1;
    group_size_ = sync_ ? 0 : checked.config.group_size;
  }
  std::string_view type() const override { return type_; }
  std::vector<ParamSpec> param_specs() const override {
    return {{"weight", {channels_}, ParamInit::Ones, 1}, {"bias", {channels_}, ParamInit::Zeros, 1}};
  }
  std::vector<StateSpec> state_specs() const override {
    return {{"running_mean", {channels_}, ParamInit::Zeros, false},
            {"running_var", {channels_}, ParamInit::Ones, false},
            {"num_batches_tracked", {}, ParamInit::Zeros, true}};
  }
  void set_cross_rank_sum(CrossRankSum* sum) override { cross_ = sum; }

  int channels() const { return channels_; }
  int spatial() const { return spatial_; }
  bool sync() const { return sync_; }
  /// Samples per group of statistics; 0 in sync mode (the whole global batch).
  int group_size() const { return group_size_; }
  double momentum() const { return momentum_; }
  double eps() const { return eps_; }
  /// Groups of statistics in a local batch of n samples (sync: 1).
  int groups(int n) const { return sync_ ? 1 : (n + group_size_ - 1) / group_size_; }
  /// Samples [first, first + count) of group k in a local batch of n.
  int group_first(int k) const { return sync_ ? 0 : k * group_size_; }
  int group_count(int k, int n) const { return sync_ ? n : std::min(group_size_, n - k * group_size_); }

 protected:
  bool exchanges() const { return cross_ != nullptr && cross_->ranks() > 1; }
  CrossRankSum* cross_ = nullptr;

 private:
  std::string_view type_;
  int channels_ = 0, spatial_ = 0, group_size_ = 0;
  double momentum_ = 0.1, eps_ = 1e-5;
  bool sync_ = false;
};

}  // namespace dptrain
