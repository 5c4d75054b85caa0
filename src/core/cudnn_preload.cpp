#include "core/cudnn_preload.h"

#include <cudnn.h>
#include <dlfcn.h>
#include <link.h>

#include <chrono>
#include <filesystem>
#include <string>

#include "core/once_in_background.h"

namespace dptrain {
namespace {

/// cuDNN 9's parts that a convolution network uses, in the order cuDNN loads them (not adv: RNNs
/// and attention).
constexpr const char* kParts[] = {"graph", "ops", "cnn", "heuristic", "engines_runtime_compiled", "engines_precompiled"};

/// The folder of the libcudnn already loaded (linked into dptrain), or empty if it cannot be found.
std::filesystem::path linked_cudnn_folder() {
  const std::string front = "libcudnn.so." + std::to_string(CUDNN_MAJOR);
  void* lib = dlopen(front.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  if (lib == nullptr) return {};
  link_map* map = nullptr;
  std::filesystem::path folder;
  if (dlinfo(lib, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr && map->l_name != nullptr)
    folder = std::filesystem::path(map->l_name).parent_path();
  dlclose(lib);  // drops only the reference RTLD_NOLOAD added
  return folder;
}

CudnnPreload preload() {
  const auto began = std::chrono::steady_clock::now();
  CudnnPreload result;
  const std::filesystem::path folder = linked_cudnn_folder();
  if (!folder.empty()) {
    for (const char* part : kParts) {
      const std::string name = "libcudnn_" + std::string(part) + ".so." + std::to_string(CUDNN_MAJOR);
      if (dlopen((folder / name).c_str(), RTLD_LAZY | RTLD_LOCAL) != nullptr)
        ++result.parts_loaded;
      else
        (void)dlerror();  // a part this cuDNN does not have: it loads what it needs itself
    }
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  return result;
}

}  // namespace

void start_preloading_cudnn() { (void)once_in_background<preload>(); }

CudnnPreload cudnn_preload_result() { return once_in_background<preload>().get(); }

}  // namespace dptrain
