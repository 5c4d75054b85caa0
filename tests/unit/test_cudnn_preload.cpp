// cuDNN's parts are loaded by the preload (core/cudnn_preload.h), from the folder of the libcudnn
// this process linked, so that cuDNN's own load of each part by name later finds it already there.
// No GPU needed: loading libraries touches no device.
#include "core/cuda_support.h"  // DPTRAIN_HAVE_CUDA

#if DPTRAIN_HAVE_CUDA
#include <cudnn.h>
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "core/cudnn_preload.h"
#include "mapped_libraries.h"

namespace dptrain {
namespace {

// In a process of its own (a death test re-executes the binary for this test alone), so that no
// other test has loaded cuDNN's parts yet. Exit codes name what failed.
TEST(CudnnPreload, LoadsEveryPartUnderTheNameCudnnAsksFor) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        if (is_mapped("libcudnn_engines_precompiled")) std::exit(3);  // loaded before anyone asked
        start_preloading_cudnn();
        start_preloading_cudnn();  // once per process
        const CudnnPreload result = cudnn_preload_result();
        if (result.parts_loaded != 6) std::exit(4);
        if (!(result.seconds > 0)) std::exit(5);
        if (!is_mapped("libcudnn_engines_precompiled") || !is_mapped("libcudnn_cnn")) std::exit(6);
        // cuDNN's own dlopen by name finds the preloaded part rather than mapping a second copy.
        const std::string name = "libcudnn_engines_precompiled.so." + std::to_string(CUDNN_MAJOR);
        if (dlopen(name.c_str(), RTLD_LAZY | RTLD_NOLOAD) == nullptr) std::exit(7);
        if (cudnn_preload_result().parts_loaded != 6) std::exit(8);  // the one preload's record
        std::exit(0);
      },
      testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace dptrain
#endif
