// Where tensors live and kernels run. One process drives one device.
#pragma once

#include <string_view>

namespace dptrain {

enum class Device { Cpu, Cuda };

constexpr std::string_view device_name(Device d) { return d == Device::Cpu ? "cpu" : "cuda"; }

}  // namespace dptrain
