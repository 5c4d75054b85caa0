#include "cpu/im2col.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace dptrain::cpu {

namespace {

/// With stride 1, the output columns [begin, end) whose input column ox - padding + kx lies inside
/// the row; the others read padding.
std::pair<int, int> valid_outputs(const ConvGeometry& g, int kx) {
  const int begin = std::clamp(g.padding - kx, 0, g.out_width);
  const int end = std::clamp(g.width + g.padding - kx, begin, g.out_width);
  return {begin, end};
}

}  // namespace

template <typename T>
void im2col(const ConvGeometry& g, const T* image, T* col, int ld) {
  for (int c = 0; c < g.channels; ++c) {
    const T* plane = image + static_cast<long>(c) * g.height * g.width;
    for (int ky = 0; ky < g.kernel; ++ky) {
      for (int kx = 0; kx < g.kernel; ++kx) {
        T* row = col + static_cast<long>((c * g.kernel + ky) * g.kernel + kx) * ld;
        for (int oy = 0; oy < g.out_height; ++oy) {
          const int y = oy * g.stride - g.padding + ky;
          T* dst = row + oy * g.out_width;
          if (y < 0 || y >= g.height) {
            std::memset(dst, 0, sizeof(T) * g.out_width);
            continue;
          }
          const T* src = plane + static_cast<long>(y) * g.width;
          if (g.stride == 1) {
            // A contiguous run of the input row between zeroed padding borders.
            const auto [begin, end] = valid_outputs(g, kx);
            std::fill(dst, dst + begin, T(0));
            std::copy(src + begin - g.padding + kx, src + end - g.padding + kx, dst + begin);
            std::fill(dst + end, dst + g.out_width, T(0));
          } else {
            for (int ox = 0; ox < g.out_width; ++ox) {
              const int x = ox * g.stride - g.padding + kx;
              dst[ox] = (x >= 0 && x < g.width) ? src[x] : T(0);
            }
          }
        }
      }
    }
  }
}

template <typename T>
void col2im(const ConvGeometry& g, const T* col, int ld, T* image) {
  for (int c = 0; c < g.channels; ++c) {
    T* plane = image + static_cast<long>(c) * g.height * g.width;
    for (int ky = 0; ky < g.kernel; ++ky) {
      for (int kx = 0; kx < g.kernel; ++kx) {
        const T* row = col + static_cast<long>((c * g.kernel + ky) * g.kernel + kx) * ld;
        for (int oy = 0; oy < g.out_height; ++oy) {
          const int y = oy * g.stride - g.padding + ky;
          if (y < 0 || y >= g.height) continue;
          T* dst = plane + static_cast<long>(y) * g.width;
          const T* src = row + oy * g.out_width;
          if (g.stride == 1) {
            const auto [begin, end] = valid_outputs(g, kx);
            T* shifted = dst - g.padding + kx;
            for (int ox = begin; ox < end; ++ox) shifted[ox] += src[ox];
            continue;
          }
          for (int ox = 0; ox < g.out_width; ++ox) {
            const int x = ox * g.stride - g.padding + kx;
            if (x >= 0 && x < g.width) dst[x] += src[ox];
          }
        }
      }
    }
  }
}

template void im2col<float>(const ConvGeometry&, const float*, float*, int);
template void im2col<double>(const ConvGeometry&, const double*, double*, int);
template void col2im<float>(const ConvGeometry&, const float*, int, float*);
template void col2im<double>(const ConvGeometry&, const double*, int, double*);

}  // namespace dptrain::cpu
