// Whether this process has mapped a library, from /proc/self/maps: shared by the tests of the
// libraries dptrain loads late (cuBLAS, cuDNN's parts).
#pragma once

#include <fstream>
#include <string>

namespace dptrain {

/// True when a mapping of this process names a file containing `name` ("libcublas").
inline bool is_mapped(const std::string& name) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line))
    if (line.find(name) != std::string::npos) return true;
  return false;
}

}  // namespace dptrain
