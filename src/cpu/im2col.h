// im2col / col2im for one sample (Caffe's formulation): the column matrix has one row per
// (input channel, kernel row, kernel column) and one column per output position, so convolution is
// one GEMM with the [out_channels x in_channels*k*k] weight matrix. Padding reads as zero.
#pragma once

namespace dptrain::cpu {

struct ConvGeometry {
  int channels, height, width;  ///< input sample
  int kernel, stride, padding;
  int out_height, out_width;
  int col_rows() const { return channels * kernel * kernel; }
  int col_cols() const { return out_height * out_width; }
};

/// col[r, j] for r < col_rows(), j < col_cols(); row stride ld (>= col_cols()).
template <typename T>
void im2col(const ConvGeometry& g, const T* image, T* col, int ld);

/// image += the scatter of col back to pixel positions (image must be zeroed by the caller).
template <typename T>
void col2im(const ConvGeometry& g, const T* col, int ld, T* image);

}  // namespace dptrain::cpu
