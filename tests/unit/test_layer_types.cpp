// The registry of layer types (io/layer_types.h) against everything that must agree with it: the
// CPU and CUDA maker tables name exactly its types, the config reader and to_yaml handle exactly
// each type's fields (with its defaults), the layers report its shape rule, error messages list
// its types, and README.md's "Layers:" line names its types and fields in its order.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <regex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/cuda_support.h"  // DPTRAIN_HAVE_CUDA
#include "core/error.h"
#include "layers/cuda/cuda_layers.h"
#include "io/config.h"
#include "io/layer_types.h"
#include "layers/layer_factory.h"

namespace dptrain {
namespace {

/// Names, sorted: a maker table's order need not be the registry's.
std::vector<std::string_view> sorted(std::vector<std::string_view> names) {
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<std::string_view> registry_types() {
  std::vector<std::string_view> names;
  for (const LayerType& t : layer_types()) names.push_back(t.name);
  return sorted(names);
}

std::string error_of(const std::string& yaml) {
  try {
    parse_config(yaml, "t.yaml");
  } catch (const InputError& e) {
    return e.what();
  }
  return "no error";
}

TEST(LayerTypes, EntriesAreWellFormed) {
  ASSERT_FALSE(layer_types().empty());
  std::set<std::string_view> names;
  for (const LayerType& t : layer_types()) {
    SCOPED_TRACE(std::string(t.name));
    EXPECT_TRUE(names.insert(t.name).second) << "duplicate type";
    EXPECT_NE(t.shape, nullptr);
    EXPECT_FALSE(t.doc.empty());
    EXPECT_EQ(find_layer_type(t.name), &t);
    std::set<std::string_view> keys;
    for (const LayerField& f : t.fields) {
      SCOPED_TRACE(std::string(f.key));
      EXPECT_TRUE(keys.insert(f.key).second) << "duplicate field";
      EXPECT_NE(f.key, "type");
      EXPECT_NE(f.key, "name");
      EXPECT_NE(f.int_member == nullptr, f.float_member == nullptr) << "exactly one member";
      if (!f.zero_means_field.empty()) {
        // The field it copies is an integer field of this type, resolved before it.
        EXPECT_NE(f.int_member, nullptr);
        EXPECT_EQ(f.zero_means, 0);
        EXPECT_TRUE(keys.contains(f.zero_means_field)) << "zero_means_field must name an earlier field";
      }
    }
  }
  EXPECT_EQ(find_layer_type("softmax"), nullptr);
  EXPECT_EQ(find_layer_type(""), nullptr);
}

// Each maker table has one line per registered type and no other (no duplicates either).
TEST(LayerTypes, EveryTypeHasOneCpuMaker) { EXPECT_EQ(sorted(cpu_layer_types()), registry_types()); }

TEST(LayerTypes, EveryTypeHasOneCudaMaker) {
#if DPTRAIN_HAVE_CUDA
  EXPECT_EQ(sorted(cuda_layer_types()), registry_types());
#else
  GTEST_SKIP() << "a CPU-only build has no CUDA maker table";
#endif
}

// The messages as they were before the table existed (configs, scripts and tests match them): the
// first six types in their old order, then any appended since (the table's order).
TEST(LayerTypes, MessagesListTheTable) {
  const std::string names = layer_type_names();
  EXPECT_TRUE(names.starts_with("conv2d, relu, maxpool2d, dropout, flatten, linear")) << names;
  EXPECT_NE(names.find(", avgpool2d, global_avgpool"), std::string::npos) << names;
  EXPECT_NE(names.find("batchnorm2d, batchnorm1d"), std::string::npos) << names;
  EXPECT_EQ(error_of("model: {layers: [{type: convolution}]}"),
            "t.yaml: 'model.layers[0].type': unknown layer type 'convolution' (" + names + ")");
  EXPECT_EQ(error_of("model: {layers: [{name: x}]}"), "t.yaml: 'model.layers[0].type': missing (" + names + ")");
  LayerConfig c;
  c.type = "softmax";
  c.name = "s";
  try {
    make_layer<double>(c, 2, Dims{1, 4, 4}, Device::Cpu);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), "model.layers[2] (s): unknown layer type 'softmax' (" + names + ")");
  }
}

/// Each field of `t` given a distinct nonzero value: key -> YAML text.
std::vector<std::pair<std::string, std::string>> distinct_values(const LayerType& t) {
  std::vector<std::pair<std::string, std::string>> values;
  int next = 2;
  for (const LayerField& f : t.fields)
    values.emplace_back(std::string(f.key), f.int_member ? std::to_string(next++) : std::string("0.25"));
  return values;
}

TEST(LayerTypes, ConfigReadsAndWritesExactlyEachTypesFields) {
  for (const LayerType& t : layer_types()) {
    SCOPED_TRACE(std::string(t.name));
    const auto values = distinct_values(t);
    std::string map = "{name: x, type: " + std::string(t.name);
    for (const auto& [key, value] : values) map += ", " + key + ": " + value;
    map += "}";
    const Config c = parse_config("model: {layers: [" + map + "]}", "t.yaml");
    ASSERT_EQ(c.model.layers.size(), 1u);
    const LayerConfig& l = c.model.layers[0];
    for (size_t i = 0; i < t.fields.size(); ++i) {
      const LayerField& f = t.fields[i];
      if (f.int_member) EXPECT_EQ(std::to_string(l.*f.int_member), values[i].second) << f.key;
      else EXPECT_DOUBLE_EQ(l.*f.float_member, 0.25) << f.key;
    }
    // to_yaml writes the same flow mapping: name, type, then the fields in the table's order.
    const std::string yaml = to_yaml(c);
    EXPECT_NE(yaml.find("    - " + map + "\n"), std::string::npos) << yaml;
    EXPECT_EQ(to_yaml(parse_config(yaml, "resolved.yaml")), yaml);
    // A field of another type is an unknown key here, naming this type's keys.
    std::set<std::string> keys{"name", "type"};
    for (const LayerField& f : t.fields) keys.insert(std::string(f.key));
    std::string known;
    for (const std::string& k : keys) known += (known.empty() ? "" : ", ") + k;
    for (const LayerType& other : layer_types())
      for (const LayerField& f : other.fields) {
        if (keys.contains(std::string(f.key))) continue;
        EXPECT_EQ(error_of("model: {layers: [{type: " + std::string(t.name) + ", " + std::string(f.key) + ": 1}]}"),
                  "t.yaml: 'model.layers[0]." + std::string(f.key) + "': unknown key (known here: " + known + ")");
      }
  }
}

TEST(LayerTypes, ZeroMeansTheDefault) {
  const Config c = parse_config(
      "model: {layers: [{type: conv2d, out_channels: 4, kernel: 3}, {type: maxpool2d, kernel: 3},"
      " {type: conv2d, out_channels: 4, kernel: 3, stride: 0}, {type: maxpool2d, kernel: 2, stride: 1}]}",
      "t.yaml");
  EXPECT_EQ(c.model.layers[0].stride, 1);
  EXPECT_EQ(c.model.layers[1].stride, 3);
  EXPECT_EQ(c.model.layers[2].stride, 1);
  EXPECT_EQ(c.model.layers[3].stride, 1);
  // A LayerConfig made in code gets the same defaults from the layer.
  LayerConfig pool;
  pool.type = "maxpool2d";
  pool.name = "pool";
  pool.kernel = 2;
  const auto layer = make_layer<float>(pool, 0, Dims{3, 8, 8}, Device::Cpu);
  EXPECT_EQ(layer->output_dims(), (Dims{3, 4, 4}));
}

TEST(LayerTypes, SizesBeyondTheBoundsAreRefusedWithTheBound) {
  LayerConfig conv = parse_config("model: {layers: [{type: conv2d, out_channels: 4, kernel: 3, padding: 100000}]}",
                                  "t.yaml").model.layers[0];
  EXPECT_EQ(find_layer_type("conv2d")->shape(conv, {1, 28, 28}).problem, "output 4x200026x200026 has a side over 65536");
  LayerConfig fc = parse_config("model: {layers: [{type: linear, out_features: 1000000}]}", "t.yaml").model.layers[0];
  EXPECT_EQ(find_layer_type("linear")->shape(fc, {64, 12, 12}).problem,
            "has 9217000000 parameters, more than 1073741824");
  EXPECT_EQ(shape_size_problem({64, 2048, 2048}), "shape 64x2048x2048 holds 268435456 values per sample, more than 134217728");
  EXPECT_EQ(shape_size_problem({1, 28, 28}), "");
}

TEST(LayerTypes, LayersReportTheirShapeRule) {
  struct Case {
    const char* yaml;
    Dims in;
  };
  const Case cases[] = {
      {"{type: conv2d, out_channels: 4, kernel: 3, stride: 2, padding: 1}", {2, 9, 7}},
      {"{type: conv2d, out_channels: 4, kernel: 5}", {2, 3, 3}},
      {"{type: conv2d, kernel: 3}", {2, 3, 3}},
      {"{type: maxpool2d, kernel: 3, padding: 1}", {2, 9, 7}},
      {"{type: maxpool2d, kernel: 2, padding: 2}", {2, 9, 7}},
      {"{type: dropout, p: 0.5}", {2, 3, 3}},
      {"{type: dropout, p: 1}", {2, 3, 3}},
      {"{type: relu}", {2, 3, 3}},
      {"{type: flatten}", {2, 3, 3}},
      {"{type: linear, out_features: 5}", {2, 3, 3}},
      {"{type: linear}", {2, 3, 3}},
      // Sizes that overflowed an int or the memory: refused, naming the bound.
      {"{type: conv2d, out_channels: 4, kernel: 3, padding: 100000}", {1, 28, 28}},
      {"{type: conv2d, out_channels: 100000, kernel: 3}", {1, 28, 28}},
      {"{type: conv2d, out_channels: 4, kernel: 3, padding: 1073741824}", {1, 28, 28}},
      {"{type: maxpool2d, kernel: 2, stride: 1, padding: 1}", {1, 65536, 2}},
      {"{type: linear, out_features: 1000000}", {64, 12, 12}},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.yaml);
    const LayerConfig c = parse_config(std::string("model: {layers: [") + k.yaml + "]}", "t.yaml").model.layers[0];
    LayerShape rule = find_layer_type(c.type)->shape(c, k.in);
    if (rule.problem.empty() && !shape_size_problem(rule.output).empty())  // what check_layer adds
      rule.problem = "output " + shape_size_problem(rule.output);
    // The CPU layers; the CUDA ones share their base classes (layers/*.h), which apply the rule.
    try {
      const auto layer = make_layer<float>(c, 1, k.in, Device::Cpu);
      EXPECT_TRUE(rule.problem.empty()) << rule.problem;
      EXPECT_EQ(layer->output_dims(), rule.output) << to_string(layer->output_dims());
    } catch (const InputError& e) {
      EXPECT_FALSE(rule.problem.empty());
      EXPECT_EQ(std::string(e.what()), "model.layers[1] (" + c.name + "): " + rule.problem);
    }
  }
}

/// README.md's "Layers:" sentence (in "## Configs"): each `type` with its "(fields)", in order.
std::vector<std::pair<std::string, std::string>> readme_layers() {
  std::ifstream in(std::string(DPTRAIN_SOURCE_DIR) + "/README.md");
  std::string line, text;
  while (std::getline(in, line) && !line.starts_with("Layers: ")) {}
  // The sentence runs to "followed by" (the loss, which is not a layer type) or the paragraph's end.
  for (; in && !line.empty(); std::getline(in, line)) text += line + " ";
  text = text.substr(0, text.find("followed by"));
  std::vector<std::pair<std::string, std::string>> layers;
  const std::regex item(R"(`([a-z0-9_]+)`(?: \(([^)]*)\))?)");
  for (std::sregex_iterator it(text.begin(), text.end(), item), end; it != end; ++it)
    layers.emplace_back((*it)[1].str(), (*it)[2].str());
  return layers;
}

TEST(LayerTypes, ReadmeListsTheTypesAndTheirFields) {
  std::vector<std::pair<std::string, std::string>> expected;
  for (const LayerType& t : layer_types()) {
    std::string fields;
    for (const LayerField& f : t.fields) fields += (fields.empty() ? "" : ", ") + std::string(f.key);
    expected.emplace_back(std::string(t.name), fields);
  }
  EXPECT_EQ(readme_layers(), expected) << "README.md's \"Layers:\" line must list layer_types() (io/layer_types.cpp)";
}

}  // namespace
}  // namespace dptrain
