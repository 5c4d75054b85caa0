// What differs between two configs, key by key (dotted paths as --set takes them), so that
// resuming a run can say exactly what changed and refuse what cannot change.
#pragma once

#include <string>
#include <vector>

#include "io/config.h"

namespace dptrain {

struct ConfigChange {
  std::string key;     ///< "train.epochs", "model.layers.0.out_channels"
  std::string before;  ///< "" when the key is new
  std::string after;   ///< "" when the key is gone
};

/// Every leaf that differs between the resolved configs, in key order.
std::vector<ConfigChange> diff_configs(const Config& before, const Config& after);

/// "key: before -> after"
std::string describe(const ConfigChange& change);

}  // namespace dptrain
