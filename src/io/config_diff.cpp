#include "io/config_diff.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <map>

namespace dptrain {

namespace {

void flatten(const YAML::Node& node, const std::string& prefix, std::map<std::string, std::string>& out) {
  const auto join = [&](const std::string& key) { return prefix.empty() ? key : prefix + "." + key; };
  if (node.IsMap()) {
    for (const auto& kv : node) flatten(kv.second, join(kv.first.as<std::string>()), out);
  } else if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) flatten(node[i], join(std::to_string(i)), out);
  } else {
    out[prefix] = node.IsNull() ? "" : node.as<std::string>();
  }
}

std::map<std::string, std::string> leaves(const Config& config) {
  std::map<std::string, std::string> out;
  flatten(YAML::Load(to_yaml(config)), "", out);
  return out;
}

}  // namespace

std::vector<ConfigChange> diff_configs(const Config& before, const Config& after) {
  const std::map<std::string, std::string> a = leaves(before), b = leaves(after);
  std::vector<ConfigChange> changes;
  for (const auto& [key, value] : a) {
    const auto it = b.find(key);
    if (it == b.end()) changes.push_back({key, value, ""});
    else if (it->second != value) changes.push_back({key, value, it->second});
  }
  for (const auto& [key, value] : b)
    if (!a.count(key)) changes.push_back({key, "", value});
  std::sort(changes.begin(), changes.end(), [](const ConfigChange& x, const ConfigChange& y) { return x.key < y.key; });
  return changes;
}

std::string describe(const ConfigChange& c) {
  const auto show = [](const std::string& v) { return v.empty() ? std::string("(none)") : v; };
  return c.key + ": " + show(c.before) + " -> " + show(c.after);
}

}  // namespace dptrain
