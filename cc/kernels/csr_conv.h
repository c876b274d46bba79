// Framework-free API of the Escort direct sparse convolution.
//
// The filter of a conv layer with `K` output channels, an `R`x`S` window and
// `C` input channels is stored as a CSR matrix of K rows by R*S*C columns:
// row k holds output channel k, and column j stands for filter tap
// (r, s, c) with j = (r * S + s) * C + c -- the row-major flattening of TF's
// HWIO filter transposed to OHWI. Column indices ascend within each row.
//
// Each kernel "stretches" a column index into an offset into its own input
// layout once per (filter, input geometry), so that one offset list serves
// every output pixel: out[k, p, q] = sum_j values[j] * in[base(p, q) + off[j]].
//
// Nothing in this directory includes TensorFlow: the TF glue in cc/tf/ and the
// GPU harness in benchmarks/gpu/ both call these entry points over raw
// pointers. Every entry point assumes its arguments passed
// ValidateCsrFilter() and ComputeConvGeometry(); the kernels do not check
// indices again on the hot path.
#ifndef ESCORT_CC_KERNELS_CSR_CONV_H_
#define ESCORT_CC_KERNELS_CSR_CONV_H_

#include <cstdint>
#include <functional>
#include <string>

namespace escort {

enum class DataFormat { kNHWC, kNCHW };
enum class Activation { kNone, kRelu, kRelu6 };

// TF's three padding modes. kExplicit takes the four explicit amounts.
enum class Padding { kSame, kValid, kExplicit };

// Sizes follow the kernel-side naming: N/H/W/C input, K output channels,
// R/S filter window, P/Q output. All sizes are int64 so that products of
// them can be checked for overflow before any 32-bit index is formed.
struct ConvGeometry {
  int64_t N = 0, H = 0, W = 0, C = 0;
  int64_t K = 0, R = 0, S = 0;
  int64_t P = 0, Q = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t dilation_h = 1, dilation_w = 1;
  // Zero padding before the first row/column. The amount after the last one
  // is implied by P and Q; input outside [0, H) x [0, W) reads as zero.
  int64_t pad_top = 0, pad_left = 0;
  int64_t pad_bottom = 0, pad_right = 0;
  DataFormat data_format = DataFormat::kNHWC;

  int64_t InputSize() const { return N * H * W * C; }
  int64_t OutputSize() const { return N * P * Q * K; }
  int64_t FilterColumns() const { return R * S * C; }
};

// What the caller asks for, in TF's terms.
struct ConvAttrs {
  int64_t stride_h = 1, stride_w = 1;
  int64_t dilation_h = 1, dilation_w = 1;
  Padding padding = Padding::kSame;
  // Used with Padding::kExplicit only.
  int64_t explicit_top = 0, explicit_bottom = 0;
  int64_t explicit_left = 0, explicit_right = 0;
  DataFormat data_format = DataFormat::kNHWC;
};

// Output size and padding of one spatial dimension, exactly as tf.nn.conv2d
// computes them. `dim_name` ("height"/"width") goes into the error message,
// returned when a VALID or explicit window is larger than the padded input.
std::string ComputeOutputSize(const char* dim_name, int64_t input_size,
                              int64_t filter_size, int64_t stride,
                              int64_t dilation, Padding padding,
                              int64_t explicit_before, int64_t explicit_after,
                              int64_t* output_size, int64_t* pad_before,
                              int64_t* pad_after);

// Fills `geometry` from the input's dimensions (N, H, W, C, already
// permuted to that order whatever the data format), the filter shape and
// the attributes, computing output size and padding exactly as
// tf.nn.conv2d does. Returns "" on success, otherwise a message naming the
// offending argument: non-positive strides or dilations, negative explicit
// padding, a filter whose input channels differ from the input's, an
// effective filter larger than the padded input, or any index the kernels
// form (input, output, filter columns, stretched offsets) that would not fit
// in int32.
std::string ComputeConvGeometry(int64_t N, int64_t H, int64_t W, int64_t C,
                                int64_t filter_h, int64_t filter_w,
                                int64_t filter_in, int64_t filter_out,
                                const ConvAttrs& attrs, ConvGeometry* geometry);

// Checks a CSR filter of `num_rows` rows and `num_columns` columns held in
// host memory. `row_offsets` has `num_row_offsets` entries, `column_indices`
// `num_column_indices`, and there are `num_values` values. Returns "" when
// row_offsets has num_rows + 1 entries, starts at 0, never decreases and
// ends at num_column_indices == num_values; every column index lies in
// [0, num_columns) and indices strictly ascend within each row. Otherwise
// returns a message naming the argument and the first bad position.
std::string ValidateCsrFilter(int64_t num_rows, int64_t num_columns,
                              const int32_t* row_offsets,
                              int64_t num_row_offsets,
                              const int32_t* column_indices,
                              int64_t num_column_indices, int64_t num_values);

// Runs `work(begin, end)` over [0, num_units), possibly split across
// threads; `cost_per_unit` is a rough cycle count per unit, as in TF's
// thread pool. The TF glue passes the intra-op pool; an empty function runs
// everything on the calling thread.
using ParallelFor = std::function<void(
    int64_t num_units, int64_t cost_per_unit,
    const std::function<void(int64_t begin, int64_t end)>& work)>;

// CPU direct sparse convolution, fp32.
//   input:   geometry.InputSize() floats in geometry.data_format.
//   row_offsets [K + 1], column_indices [nnz], values [nnz]: the CSR filter.
//   bias:    K floats, or nullptr for none.
//   output:  geometry.OutputSize() floats in geometry.data_format; every
//            element is written.
// The summation order of each output element is fixed (ascending column
// index, bias added last), so results do not depend on the thread count.
void CsrConv2DCpu(const ConvGeometry& geometry, const float* input,
                  const int32_t* row_offsets, const int32_t* column_indices,
                  const float* values, const float* bias,
                  Activation activation, float* output,
                  const ParallelFor& parallel_for);

// Splits [0, num_units) into `threads` near-equal ranges, runs `work` on
// each on its own std::thread and waits for all: for the reference below and
// the tests (the op itself takes TF's pool through ParallelFor).
void RunOnThreads(int64_t num_units, int64_t threads,
                  const std::function<void(int64_t begin, int64_t end)>& work);

// Straightforward reference of the same function, accumulating in double.
// For tests and fuzzing; never used by the op.
void CsrConv2DReference(const ConvGeometry& geometry, const float* input,
                        const int32_t* row_offsets,
                        const int32_t* column_indices, const float* values,
                        const float* bias, Activation activation,
                        float* output);

}  // namespace escort

#endif  // ESCORT_CC_KERNELS_CSR_CONV_H_
