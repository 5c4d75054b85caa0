// cuBLAS is loaded on first use (or by start_loading_cublas), not when the process starts
// (core/cublas_loader.h): a process that never uses cuBLAS never maps it, and the forwarded entry
// points reach the real library. No GPU needed: cublasGetStatusString touches no device.
#include "core/cuda_support.h"  // DPTRAIN_HAVE_CUDA

#if DPTRAIN_HAVE_CUDA
#include <cublas_v2.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "core/cublas_loader.h"
#include "mapped_libraries.h"

namespace dptrain {
namespace {

// In a process of its own (a death test re-executes the binary for this test alone), so that no
// other test has loaded cuBLAS yet. Exit codes name what failed.
TEST(CublasLoader, TheLibraryIsMappedOnFirstUseNotAtStart) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        if (is_mapped("libcublas")) std::exit(3);  // linked, or loaded by a static initialiser
        const std::string text = cublasGetStatusString(CUBLAS_STATUS_NOT_INITIALIZED);
        if (!is_mapped("libcublas")) std::exit(4);
        if (text.find("not initialized") == std::string::npos) std::exit(5);  // cuBLAS's own words
        std::exit(0);
      },
      testing::ExitedWithCode(0), "");
}

TEST(CublasLoader, StartingTheLoadTwiceLoadsOnceAndReportsItsTime) {
  start_loading_cublas();
  start_loading_cublas();
  const double seconds = cublas_load_seconds();
  EXPECT_GT(seconds, 0.0);
  EXPECT_LT(seconds, 60.0);
  EXPECT_EQ(cublas_load_seconds(), seconds);  // the one load's record, not a new load
  EXPECT_TRUE(is_mapped("libcublas"));
  EXPECT_STREQ(cublasGetStatusString(CUBLAS_STATUS_SUCCESS), cublasGetStatusString(CUBLAS_STATUS_SUCCESS));
}

}  // namespace
}  // namespace dptrain
#endif
