#include "core/tensor.h"

namespace dptrain {

std::string to_string(const Dims& d) {
  return std::to_string(d.c) + "x" + std::to_string(d.h) + "x" + std::to_string(d.w);
}

}  // namespace dptrain
