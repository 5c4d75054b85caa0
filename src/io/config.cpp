#include "io/config.h"

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/escape.h"
#include "io/layer_types.h"
#include "io/plan_cache.h"

namespace dptrain {

namespace {

/// Why a config string (a name, a path, a type) cannot stand in the file, or nothing: a control
/// character, or bytes that are not UTF-8. YAML is Unicode text; to_yaml could not write such a
/// value back so that it reads the same (a trailing carriage return is a line end when read again).
std::optional<std::string> string_value_problem(const std::string& text) {
  const auto control = std::find_if(text.begin(), text.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
  });
  // nlohmann's UTF-8 check (the one the safetensors headers pass): no overlong forms, no
  // surrogates, nothing past U+10FFFF, no cut sequence. Over the text before the first control
  // character: the first problem in the text is the one named.
  try {
    (void)nlohmann::json(std::string(text.begin(), control)).dump();
  } catch (const nlohmann::json::type_error&) {
    return "is not valid UTF-8";
  }
  if (control != text.end()) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned char>(*control));
    return std::string("contains a control character (") + hex + ")";
  }
  return std::nullopt;
}

/// Reads one YAML mapping, remembering which keys were used, so that any key left over is
/// reported as unknown (a typo in a config must never be silently ignored).
class MapReader {
 public:
  MapReader(const YAML::Node& node, std::string path, const std::string& source)
      : node_(node), path_(std::move(path)), source_(source) {
    if (node_ && !node_.IsNull() && !node_.IsMap()) fail(path_, "expected a mapping");
    // yaml-cpp keeps both of a repeated key and answers lookups with the first: the second would
    // be silently ignored, like a typo.
    if (!node_ || node_.IsNull()) return;
    std::set<std::string> seen;
    for (const auto& kv : node_)
      if (kv.first.IsScalar() && !seen.insert(kv.first.Scalar()).second)
        fail(join(kv.first.Scalar()), "appears twice in the same mapping");
  }

  template <typename T>
  void get(std::string_view key_view, T& out) {
    const std::string key(key_view);
    used_.insert(key);
    if (!node_ || node_.IsNull()) return;
    const YAML::Node v = node_[key];
    if (!v) return;
    out = convert<T>(v, join(key));
  }

  YAML::Node child(const char* key) {
    used_.insert(key);
    return node_ && !node_.IsNull() ? node_[key] : YAML::Node();
  }
  bool has(const char* key) const { return node_ && !node_.IsNull() && node_[key]; }
  std::string join(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

  /// Throws for the first key not read.
  void finish() const {
    if (!node_ || node_.IsNull()) return;
    for (const auto& kv : node_) {
      // A complex key ("? [a, b]" or "{a: 1}: x") is legal YAML but never a config key.
      if (!kv.first.IsScalar()) fail(path_.empty() ? "(top level)" : path_, "keys must be plain names, found a list or mapping as a key");
      const std::string key = kv.first.Scalar();
      if (!used_.count(key)) {
        std::string known;
        for (const auto& k : used_) known += (known.empty() ? "" : ", ") + k;
        fail(join(key), "unknown key (known here: " + known + ")");
      }
    }
  }

  [[noreturn]] void fail(const std::string& key, const std::string& problem) const {
    throw InputError(source_, "'" + key + "': " + problem);
  }

 private:
  template <typename T>
  T convert(const YAML::Node& v, const std::string& key) const {
    const char* expected = std::is_same_v<T, bool>          ? "true or false"
                           : std::is_integral_v<T>          ? "an integer"
                           : std::is_floating_point_v<T>    ? "a number"
                                                            : "a string";
    if (!v.IsScalar()) fail(key, std::string("expected ") + expected);
    T value{};
    try {
      value = v.as<T>();
    } catch (const YAML::Exception&) {
      fail(key, std::string("expected ") + expected + ", got '" + v.Scalar() + "'");
    }
    if constexpr (std::is_floating_point_v<T>) {
      if (!std::isfinite(value)) fail(key, "expected a finite number, got '" + v.Scalar() + "'");
    }
    if constexpr (std::is_same_v<T, std::string>) {
      if (const auto problem = string_value_problem(value)) fail(key, "the value " + *problem);
    }
    return value;
  }

  YAML::Node node_;
  std::string path_;
  const std::string& source_;
  std::set<std::string> used_;
};

void require(bool ok, const MapReader& r, const std::string& key, const std::string& problem) {
  if (!ok) r.fail(key, problem);
}

LayerConfig read_layer(const YAML::Node& node, const std::string& path, const std::string& source) {
  MapReader r(node, path, source);
  LayerConfig l;
  r.get("type", l.type);
  r.get("name", l.name);
  require(!l.type.empty(), r, r.join("type"), "missing (" + layer_type_names() + ")");
  const LayerType* type = find_layer_type(l.type);
  if (type == nullptr) r.fail(r.join("type"), "unknown layer type '" + l.type + "' (" + layer_type_names() + ")");
  // Only the fields that belong to the layer's type are read; others are reported as unknown.
  for (const LayerField& f : type->fields) {
    if (f.int_member != nullptr) r.get(f.key, l.*f.int_member);
    else r.get(f.key, l.*f.float_member);
  }
  r.finish();
  // Resolve defaults here so the saved config says what ran.
  return with_defaults(*type, std::move(l));
}

ModelConfig read_model(const YAML::Node& node, const std::string& source) {
  MapReader r(node, "model", source);
  ModelConfig m;
  if (const YAML::Node in = r.child("input")) {
    if (!in.IsSequence() || in.size() != 3) r.fail("model.input", "expected [channels, height, width]");
    try {
      m.input = Dims{in[0].as<int>(), in[1].as<int>(), in[2].as<int>()};
    } catch (const YAML::Exception&) {
      r.fail("model.input", "expected three integers [channels, height, width]");
    }
  }
  r.get("num_classes", m.num_classes);
  const YAML::Node layers = r.child("layers");
  if (!layers || !layers.IsSequence() || layers.size() == 0) r.fail("model.layers", "expected a non-empty list of layers");
  std::map<std::string, int> per_type;
  std::set<std::string> names;
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string path = "model.layers[" + std::to_string(i) + "]";
    LayerConfig l = read_layer(layers[i], path, source);
    const int k = ++per_type[l.type];
    if (l.name.empty()) l.name = l.type + std::to_string(k);
    if (!names.insert(l.name).second) r.fail(path + ".name", "duplicate layer name '" + l.name + "'");
    m.layers.push_back(std::move(l));
  }
  r.finish();
  require(m.input.c > 0 && m.input.h > 0 && m.input.w > 0, r, "model.input", "dimensions must be positive");
  if (const std::string too_large = shape_size_problem(m.input); !too_large.empty()) r.fail("model.input", too_large);
  require(m.num_classes >= 2 && m.num_classes <= kMaxClasses, r, "model.num_classes",
          "must be in 2.." + std::to_string(kMaxClasses));
  return m;
}

OptimizerConfig read_optimizer(const YAML::Node& node, const std::string& source) {
  MapReader r(node, "train.optimizer", source);
  OptimizerConfig o;
  r.get("type", o.type);
  // PyTorch's defaults for the chosen type, before the file's values.
  if (o.type == "adadelta") {
    o.lr = 1.0, o.eps = 1e-6, o.rho = 0.9;
  } else if (o.type == "adam" || o.type == "adamw") {
    o.lr = 1e-3, o.eps = 1e-8, o.weight_decay = o.type == "adamw" ? 1e-2 : 0.0;
  } else if (o.type == "sgd") {
    o.lr = 1e-3;
  } else {
    r.fail("train.optimizer.type", "unknown optimizer '" + o.type + "' (sgd, adam, adamw, adadelta)");
  }
  r.get("lr", o.lr);
  r.get("weight_decay", o.weight_decay);
  if (o.type == "sgd") {
    r.get("momentum", o.momentum);
    r.get("dampening", o.dampening);
    r.get("nesterov", o.nesterov);
  } else if (o.type == "adadelta") {
    r.get("rho", o.rho);
    r.get("eps", o.eps);
  } else {
    r.get("beta1", o.beta1);
    r.get("beta2", o.beta2);
    r.get("eps", o.eps);
  }
  // A setting of another optimizer type: most often left behind by changing `type` alone (with
  // --set, or resuming from a checkpoint whose config names another optimizer).
  struct OwnedSetting {
    const char* key;
    std::array<std::string_view, 3> types;  // the optimizer types that read it
    const char* owners;                     // the same, as the message says them
  };
  static constexpr OwnedSetting kOwned[] = {{"momentum", {"sgd"}, "sgd"},
                                            {"dampening", {"sgd"}, "sgd"},
                                            {"nesterov", {"sgd"}, "sgd"},
                                            {"rho", {"adadelta"}, "adadelta"},
                                            {"beta1", {"adam", "adamw"}, "adam and adamw"},
                                            {"beta2", {"adam", "adamw"}, "adam and adamw"},
                                            {"eps", {"adam", "adamw", "adadelta"}, "adam, adamw and adadelta"}};
  for (const OwnedSetting& s : kOwned) {
    if (r.has(s.key) && std::find(s.types.begin(), s.types.end(), o.type) == s.types.end())
      r.fail(r.join(s.key), "a setting of " + std::string(s.owners) + ", not of " + o.type +
                                " (the optimizer type changed? set or remove it with the type)");
  }
  r.finish();
  return o;
}

void read_onecycle(MapReader& r, ScheduleConfig& s) {
  r.get("max_lr", s.max_lr);
  r.get("pct_start", s.pct_start);
  r.get("div_factor", s.div_factor);
  r.get("final_div_factor", s.final_div_factor);
  r.get("anneal", s.anneal);
  r.get("cycle_momentum", s.cycle_momentum);
  r.get("base_momentum", s.base_momentum);
  r.get("max_momentum", s.max_momentum);
}

/// The ranges torch.optim.lr_scheduler checks (and a few it leaves to a division by zero).
void check_schedule(const MapReader& r, const ScheduleConfig& s) {
  const auto finite = [](double v) { return std::isfinite(v); };
  if (s.type == "onecycle") {
    require(r.has("max_lr"), r, "train.schedule.max_lr", "required for onecycle (the peak rate)");
    require(finite(s.max_lr) && s.max_lr > 0, r, "train.schedule.max_lr", "must be > 0");
    require(finite(s.pct_start) && s.pct_start >= 0 && s.pct_start <= 1, r, "train.schedule.pct_start",
            "must be in [0, 1]");
    require(finite(s.div_factor) && s.div_factor > 0, r, "train.schedule.div_factor", "must be > 0");
    require(finite(s.final_div_factor) && s.final_div_factor > 0, r, "train.schedule.final_div_factor", "must be > 0");
    require(s.anneal == "cos" || s.anneal == "linear", r, "train.schedule.anneal", "must be cos or linear");
    require(finite(s.base_momentum) && s.base_momentum >= 0 && s.base_momentum < 1, r, "train.schedule.base_momentum",
            "must be in [0, 1)");
    require(finite(s.max_momentum) && s.max_momentum >= 0 && s.max_momentum < 1, r, "train.schedule.max_momentum",
            "must be in [0, 1)");
    require(s.warmup_steps == 0, r, "train.schedule.warmup_steps",
            "must be 0 with onecycle (it warms up itself: pct_start)");
  }
  if (s.type == "linear") {
    require(finite(s.start_factor) && s.start_factor > 0 && s.start_factor <= 1, r, "train.schedule.start_factor",
            "must be in (0, 1] (as torch.optim.lr_scheduler.LinearLR)");
    require(finite(s.end_factor) && s.end_factor >= 0 && s.end_factor <= 1, r, "train.schedule.end_factor",
            "must be in [0, 1]");
    require(s.total_iters >= 0, r, "train.schedule.total_iters", "must be >= 0 (0: the whole planned run)");
  }
}

ScheduleConfig read_schedule(const YAML::Node& node, const std::string& source) {
  MapReader r(node, "train.schedule", source);
  ScheduleConfig s;
  r.get("type", s.type);
  r.get("warmup_steps", s.warmup_steps);
  if (s.type == "step") {
    r.get("step_size", s.step_size);
    r.get("gamma", s.gamma);
  } else if (s.type == "cosine") {
    r.get("min_lr", s.min_lr);
  } else if (s.type == "onecycle") {
    read_onecycle(r, s);
  } else if (s.type == "linear") {
    r.get("start_factor", s.start_factor);
    r.get("end_factor", s.end_factor);
    r.get("total_iters", s.total_iters);
  } else if (s.type != "constant") {
    r.fail("train.schedule.type", "unknown schedule '" + s.type + "' (constant, step, cosine, onecycle, linear)");
  }
  r.finish();
  check_schedule(r, s);
  require(s.warmup_steps >= 0, r, "train.schedule.warmup_steps", "must be >= 0");
  require(s.step_size > 0, r, "train.schedule.step_size", "must be > 0");
  require(s.gamma > 0, r, "train.schedule.gamma", "must be > 0");
  require(s.min_lr >= 0, r, "train.schedule.min_lr", "must be >= 0");
  return s;
}

/// onecycle's momentum cycling needs a momentum to cycle (PyTorch's OneCycleLR refuses the same).
void check_cycled_momentum(const MapReader& r, const TrainConfig& t) {
  const ScheduleConfig& s = t.schedule;
  if (s.type != "onecycle" || !s.cycle_momentum) return;
  require(t.optimizer.type != "adadelta", r, "train.schedule.cycle_momentum",
          "adadelta has no momentum or beta1 to cycle (set cycle_momentum: false)");
  // torch.optim.SGD skips its momentum buffer at a step whose momentum is 0; cycling through 0
  // would need that buffer to appear and vanish.
  if (t.optimizer.type == "sgd") {
    require(s.base_momentum > 0, r, "train.schedule.base_momentum", "must be > 0 when cycling SGD's momentum");
    require(s.max_momentum > 0, r, "train.schedule.max_momentum", "must be > 0 when cycling SGD's momentum");
  }
}

TrainConfig read_train(const YAML::Node& node, const std::string& source) {
  MapReader r(node, "train", source);
  TrainConfig t;
  r.get("batch_size", t.batch_size);
  r.get("batch_per_rank", t.batch_per_rank);
  r.get("epochs", t.epochs);
  r.get("max_steps", t.max_steps);
  r.get("seed", t.seed);
  r.get("eval_batch_size", t.eval_batch_size);
  r.get("precision", t.precision);
  r.get("cuda_graph", t.cuda_graph);
  r.get("cudnn_benchmark", t.cudnn_benchmark);
  r.get("deterministic", t.deterministic);
  r.get("exact_convolutions", t.exact_convolutions);
  r.get("check_numerics", t.check_numerics);
  r.get("log_every", t.log_every);
  r.get("plan_cache", t.plan_cache);
  r.get("label_smoothing", t.label_smoothing);
  r.get("eval_every", t.eval_every);
  t.optimizer = read_optimizer(r.child("optimizer"), source);
  t.schedule = read_schedule(r.child("schedule"), source);
  r.finish();
  require(std::isfinite(t.label_smoothing) && t.label_smoothing >= 0 && t.label_smoothing < 1, r,
          "train.label_smoothing", "must be in [0, 1)");
  require(t.eval_every >= 0, r, "train.eval_every", "must be >= 0 (0: only the final test pass)");
  check_cycled_momentum(r, t);
  require(t.batch_size > 0, r, "train.batch_size", "must be > 0");
  require(t.batch_per_rank >= 0, r, "train.batch_per_rank", "must be >= 0 (0: use batch_size)");
  require(t.epochs > 0, r, "train.epochs", "must be > 0");
  require(t.max_steps >= 0, r, "train.max_steps", "must be >= 0 (0: no limit)");
  require(t.eval_batch_size > 0, r, "train.eval_batch_size", "must be > 0");
  require(t.log_every > 0, r, "train.log_every", "must be > 0");
  require(t.precision == "float32" || t.precision == "tf32", r, "train.precision", "must be float32 or tf32");
  if (const auto problem = plan_cache_setting_problem(t.plan_cache)) r.fail("train.plan_cache", *problem);
  return t;
}

AugmentConfig read_augment(const YAML::Node& node, const std::string& source) {
  MapReader r(node, "data.augment", source);
  AugmentConfig a;
  r.get("rotation", a.rotation);
  r.get("scale", a.scale);
  r.get("translation", a.translation);
  r.get("shear", a.shear);
  r.get("erasing", a.erasing);
  r.get("fill", a.fill);
  r.finish();
  // !(x >= lo) also refuses NaN. The upper bounds keep the transform invertible (scale < 1, shear
  // < 90) and the angles inside the range core/augment.h's series are exact for.
  require(a.rotation >= 0 && a.rotation <= 180, r, "data.augment.rotation", "must be in [0, 180] degrees (0: off)");
  require(a.scale >= 0 && a.scale < 1, r, "data.augment.scale", "must be in [0, 1): the zoom factor is 1 +- scale (0: off)");
  require(a.translation >= 0 && std::isfinite(a.translation), r, "data.augment.translation", "must be >= 0 pixels (0: off)");
  require(a.shear >= 0 && a.shear < 90, r, "data.augment.shear", "must be in [0, 90) degrees (0: off)");
  require(a.erasing >= 0 && a.erasing <= 1, r, "data.augment.erasing", "must be a probability in [0, 1] (0: off)");
  require(a.fill >= 0 && a.fill <= 255, r, "data.augment.fill", "must be a raw pixel value in [0, 255]");
  return a;
}

std::vector<std::string> read_classes(const YAML::Node& node, const MapReader& r) {
  std::vector<std::string> names;
  if (!node || node.IsNull()) return names;
  if (!node.IsSequence()) r.fail("data.classes", "expected a list of class names");
  std::set<std::string> seen;
  for (size_t i = 0; i < node.size(); ++i) {
    const std::string key = "data.classes[" + std::to_string(i) + "]";
    if (!node[i].IsScalar() || node[i].Scalar().empty()) r.fail(key, "expected a non-empty name");
    if (!seen.insert(node[i].Scalar()).second) r.fail(key, "duplicate class name '" + node[i].Scalar() + "'");
    names.push_back(node[i].Scalar());
  }
  return names;
}

DataConfig read_data(const YAML::Node& node, const std::string& source) {
  MapReader r(node, "data", source);
  DataConfig d;
  r.get("dir", d.dir);
  r.get("mean", d.mean);
  r.get("std", d.std);
  d.augment = read_augment(r.child("augment"), source);
  d.classes = read_classes(r.child("classes"), r);
  r.finish();
  require(d.std > 0, r, "data.std", "must be > 0");
  return d;
}

CommConfig read_comm(const YAML::Node& node, const std::string& source) {
  MapReader r(node, "comm", source);
  CommConfig c;
  r.get("backend", c.backend);
  r.get("bucket_mb", c.bucket_mb);
  r.get("overlap", c.overlap);
  r.get("timeout_s", c.timeout_s);
  r.finish();
  require(c.backend == "auto" || c.backend == "nccl" || c.backend == "mpi", r, "comm.backend", "must be auto, nccl or mpi");
  require(c.bucket_mb > 0, r, "comm.bucket_mb", "must be > 0");
  require(c.timeout_s > 0, r, "comm.timeout_s", "must be > 0");
  return c;
}

CheckpointConfig read_checkpoint(const YAML::Node& node, const std::string& source) {
  MapReader r(node, "checkpoint", source);
  CheckpointConfig c;
  r.get("every_steps", c.every_steps);
  r.get("every_epoch", c.every_epoch);
  r.get("keep", c.keep);
  r.finish();
  require(c.every_steps >= 0, r, "checkpoint.every_steps", "must be >= 0");
  require(c.keep >= 1, r, "checkpoint.keep", "must be >= 1");
  return c;
}

/// Applies "a.b.c=value" to the document: mapping keys by name, list entries by index.
void apply_override(YAML::Node& root, const std::string& assignment, const std::string& source) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw InputError("--set " + assignment, "expected key=value with a dotted key, e.g. train.batch_size=128");
  const std::string key = assignment.substr(0, eq);
  YAML::Node value;
  try {
    value = YAML::Load(assignment.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    throw InputError("--set " + assignment, "value is not valid YAML: " + escape_control_chars(e.msg));
  }
  std::vector<std::string> parts;
  std::stringstream ss(key);
  for (std::string part; std::getline(ss, part, '.');) parts.push_back(part);
  if (key.ends_with('.')) parts.emplace_back();  // getline drops a trailing empty part: "train.=5" is refused below
  // yaml-cpp nodes are handles: walking with operator[] on copies edits the document in place.
  std::function<void(YAML::Node, size_t)> set_at = [&](YAML::Node node, size_t i) {
    const std::string& part = parts[i];
    const bool last = i + 1 == parts.size();
    if (part.empty()) throw InputError("--set " + assignment, "empty component in key '" + key + "'");
    if (node.IsSequence()) {
      size_t idx = 0;
      try {
        idx = std::stoul(part);
      } catch (const std::exception&) {
        throw InputError("--set " + assignment, "'" + part + "' must be a list index in '" + key + "'");
      }
      if (idx >= node.size()) throw InputError("--set " + assignment, "index " + part + " out of range in '" + key + "'");
      if (last) node[idx] = value; else set_at(node[idx], i + 1);
      return;
    }
    if (!node.IsMap() && !node.IsNull())
      throw InputError("--set " + assignment, "'" + part + "' is inside a value, not a mapping, in '" + key + "'");
    if (last) {
      node[part] = value;
    } else {
      YAML::Node next = node[part];
      if (!next) {
        node[part] = YAML::Node(YAML::NodeType::Map);
        next = node[part];
      }
      set_at(next, i + 1);
    }
  };
  set_at(root, 0);
  (void)source;
}

Config build(YAML::Node root, const std::string& source, const std::string& default_name) {
  if (!root.IsMap()) throw InputError(source, "expected a YAML mapping at the top level");
  MapReader r(root, "", source);
  Config c;
  c.source = source;
  c.name = default_name;
  r.get("name", c.name);
  c.model = read_model(r.child("model"), source);
  c.data = read_data(r.child("data"), source);
  c.train = read_train(r.child("train"), source);
  c.comm = read_comm(r.child("comm"), source);
  c.checkpoint = read_checkpoint(r.child("checkpoint"), source);
  r.finish();
  if (c.name.empty()) r.fail("name", "must not be empty");
  if (!c.data.classes.empty() && static_cast<int>(c.data.classes.size()) != c.model.num_classes)
    r.fail("data.classes", "has " + std::to_string(c.data.classes.size()) + " names but model.num_classes is " +
                               std::to_string(c.model.num_classes));
  return c;
}

}  // namespace

Config parse_config(const std::string& yaml_text, const std::string& source, const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    // escaped: yaml-cpp quotes the offending byte, a NUL in a binary file, which would end the line
    throw InputError(source, "not valid YAML: " + escape_control_chars(e.msg) + " (line " + std::to_string(e.mark.line + 1) + ")");
  }
  if (!root || root.IsNull()) throw InputError(source, "the config is empty");
  // Before the overrides, which would otherwise report a list at the top as their own mistake.
  if (!root.IsMap()) throw InputError(source, "expected a YAML mapping at the top level");
  for (const std::string& o : overrides) apply_override(root, o, source);
  const std::string stem = std::filesystem::path(source).stem().string();
  try {
    return build(root, source, stem);
  } catch (const YAML::Exception& e) {
    // Every shape the readers expect is checked before conversion; this is the net for any that
    // slips through, so a config mistake is never an uncaught library exception.
    throw InputError(source, "unexpected structure: " + e.msg + " (line " + std::to_string(e.mark.line + 1) + ")");
  }
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  constexpr uint64_t kMaxConfigBytes = uint64_t{16} << 20;  // configs are a few KiB; never read a stray huge file
  return parse_config(read_whole_file(path, kMaxConfigBytes), path, overrides);
}

namespace {

/// Shortest text that reads back as the same double (0.1307, not 0.13070000000000001).
std::string num(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

}  // namespace

std::string to_yaml(const Config& c) {
  YAML::Emitter out;
  out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << c.name;
  out << YAML::Key << "model" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "input" << YAML::Value << YAML::Flow << YAML::BeginSeq << c.model.input.c << c.model.input.h
      << c.model.input.w << YAML::EndSeq;
  out << YAML::Key << "num_classes" << YAML::Value << c.model.num_classes;
  out << YAML::Key << "layers" << YAML::Value << YAML::BeginSeq;
  for (const LayerConfig& l : c.model.layers) {
    out << YAML::Flow << YAML::BeginMap << YAML::Key << "name" << YAML::Value << l.name << YAML::Key << "type"
        << YAML::Value << l.type;
    if (const LayerType* type = find_layer_type(l.type)) {
      for (const LayerField& f : type->fields) {
        out << YAML::Key << std::string(f.key) << YAML::Value;
        if (f.int_member != nullptr) out << l.*f.int_member;
        else out << num(l.*f.float_member);
      }
    }
    out << YAML::EndMap;
  }
  out << YAML::EndSeq << YAML::EndMap;
  out << YAML::Key << "data" << YAML::Value << YAML::BeginMap << YAML::Key << "dir" << YAML::Value << c.data.dir
      << YAML::Key << "mean" << YAML::Value << num(c.data.mean) << YAML::Key << "std" << YAML::Value << num(c.data.std);
  const AugmentConfig& a = c.data.augment;
  out << YAML::Key << "augment" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "rotation" << YAML::Value
      << num(a.rotation) << YAML::Key << "scale" << YAML::Value << num(a.scale) << YAML::Key << "translation"
      << YAML::Value << num(a.translation) << YAML::Key << "shear" << YAML::Value << num(a.shear) << YAML::Key
      << "erasing" << YAML::Value << num(a.erasing) << YAML::Key << "fill" << YAML::Value << num(a.fill) << YAML::EndMap;
  if (!c.data.classes.empty()) {
    // Quoted: a name such as "yes", "1" or "null" must read back as the same string.
    out << YAML::Key << "classes" << YAML::Value << YAML::Flow << YAML::BeginSeq;
    for (const std::string& name : c.data.classes) out << YAML::DoubleQuoted << name;
    out << YAML::EndSeq;
  }
  out << YAML::EndMap;
  const TrainConfig& t = c.train;
  out << YAML::Key << "train" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "batch_size" << YAML::Value << t.batch_size << YAML::Key << "batch_per_rank" << YAML::Value
      << t.batch_per_rank << YAML::Key << "epochs" << YAML::Value << t.epochs << YAML::Key << "max_steps"
      << YAML::Value << t.max_steps << YAML::Key << "seed" << YAML::Value << t.seed << YAML::Key << "eval_batch_size"
      << YAML::Value << t.eval_batch_size << YAML::Key << "precision" << YAML::Value << t.precision << YAML::Key
      << "cuda_graph" << YAML::Value << t.cuda_graph << YAML::Key << "cudnn_benchmark" << YAML::Value
      << t.cudnn_benchmark << YAML::Key << "deterministic" << YAML::Value << t.deterministic << YAML::Key
      << "exact_convolutions" << YAML::Value << t.exact_convolutions << YAML::Key
      << "check_numerics" << YAML::Value << t.check_numerics << YAML::Key
      << "log_every" << YAML::Value << t.log_every << YAML::Key << "label_smoothing" << YAML::Value
      << num(t.label_smoothing) << YAML::Key << "eval_every" << YAML::Value << t.eval_every;
  out << YAML::Key << "plan_cache" << YAML::Value << t.plan_cache;
  const OptimizerConfig& o = t.optimizer;
  out << YAML::Key << "optimizer" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "type"
      << YAML::Value << o.type << YAML::Key << "lr" << YAML::Value << num(o.lr) << YAML::Key << "weight_decay"
      << YAML::Value << num(o.weight_decay);
  if (o.type == "sgd")
    out << YAML::Key << "momentum" << YAML::Value << num(o.momentum) << YAML::Key << "dampening" << YAML::Value
        << num(o.dampening) << YAML::Key << "nesterov" << YAML::Value << o.nesterov;
  else if (o.type == "adadelta")
    out << YAML::Key << "rho" << YAML::Value << num(o.rho) << YAML::Key << "eps" << YAML::Value << num(o.eps);
  else
    out << YAML::Key << "beta1" << YAML::Value << num(o.beta1) << YAML::Key << "beta2" << YAML::Value << o.beta2
        << YAML::Key << "eps" << YAML::Value << num(o.eps);
  out << YAML::EndMap;
  const ScheduleConfig& s = t.schedule;
  out << YAML::Key << "schedule" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "type" << YAML::Value
      << s.type << YAML::Key << "warmup_steps" << YAML::Value << s.warmup_steps;
  if (s.type == "step")
    out << YAML::Key << "step_size" << YAML::Value << s.step_size << YAML::Key << "gamma" << YAML::Value << num(s.gamma);
  if (s.type == "cosine") out << YAML::Key << "min_lr" << YAML::Value << num(s.min_lr);
  if (s.type == "onecycle")
    out << YAML::Key << "max_lr" << YAML::Value << num(s.max_lr) << YAML::Key << "pct_start" << YAML::Value
        << num(s.pct_start) << YAML::Key << "div_factor" << YAML::Value << num(s.div_factor) << YAML::Key
        << "final_div_factor" << YAML::Value << num(s.final_div_factor) << YAML::Key << "anneal" << YAML::Value
        << s.anneal << YAML::Key << "cycle_momentum" << YAML::Value << s.cycle_momentum << YAML::Key
        << "base_momentum" << YAML::Value << num(s.base_momentum) << YAML::Key << "max_momentum" << YAML::Value
        << num(s.max_momentum);
  if (s.type == "linear")
    out << YAML::Key << "start_factor" << YAML::Value << num(s.start_factor) << YAML::Key << "end_factor"
        << YAML::Value << num(s.end_factor) << YAML::Key << "total_iters" << YAML::Value << s.total_iters;
  out << YAML::EndMap << YAML::EndMap;
  out << YAML::Key << "comm" << YAML::Value << YAML::BeginMap << YAML::Key << "backend" << YAML::Value
      << c.comm.backend << YAML::Key << "bucket_mb" << YAML::Value << num(c.comm.bucket_mb) << YAML::Key << "overlap"
      << YAML::Value << c.comm.overlap << YAML::Key << "timeout_s" << YAML::Value << num(c.comm.timeout_s) << YAML::EndMap;
  out << YAML::Key << "checkpoint" << YAML::Value << YAML::BeginMap << YAML::Key << "every_steps" << YAML::Value
      << c.checkpoint.every_steps << YAML::Key << "every_epoch" << YAML::Value << c.checkpoint.every_epoch
      << YAML::Key << "keep" << YAML::Value << c.checkpoint.keep << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace dptrain
