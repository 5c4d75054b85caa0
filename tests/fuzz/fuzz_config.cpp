// libFuzzer target: arbitrary text as a config file. parse_config must accept it or throw
// InputError naming the problem; any other exception, a crash or a sanitizer report is a bug. An
// accepted config must also survive the round trip through to_yaml.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "io/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const dptrain::Config config = dptrain::parse_config(text, "fuzz.yaml");
    const dptrain::Config again = dptrain::parse_config(dptrain::to_yaml(config), "round trip");
    if (dptrain::to_yaml(again) != dptrain::to_yaml(config)) __builtin_trap();
  } catch (const dptrain::InputError&) {
  }
  return 0;
}
