// The one place where CSR filters and convolution geometry are checked.
// The kernels trust what passes here, so every index they form must be
// proven in range by these functions.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>

#include "cc/kernels/csr_conv.h"

namespace escort {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
// Largest spatial size, stride, dilation or padding accepted.
constexpr int64_t kMaxDim = int64_t{1} << 30;

// Multiplies non-negative factors, saturating at INT64_MAX, so an overflow
// check never overflows itself.
int64_t SaturatingProduct(std::initializer_list<int64_t> factors) {
  int64_t product = 1;
  for (int64_t factor : factors) {
    if (factor == 0) return 0;
    if (product > std::numeric_limits<int64_t>::max() / factor) {
      return std::numeric_limits<int64_t>::max();
    }
    product *= factor;
  }
  return product;
}

template <typename... Parts>
std::string Message(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

}  // namespace

std::string ComputeOutputSize(const char* dim_name, int64_t input_size,
                             int64_t filter_size, int64_t stride,
                             int64_t dilation, Padding padding,
                             int64_t explicit_before, int64_t explicit_after,
                             int64_t* output_size, int64_t* pad_before,
                             int64_t* pad_after) {
  if (input_size < 0 || filter_size < 1 || stride < 1 || dilation < 1 ||
      explicit_before < 0 || explicit_after < 0) {
    return Message("invalid ", dim_name, " geometry: input ", input_size,
                   ", filter ", filter_size, ", stride ", stride, ", dilation ",
                   dilation, ", explicit padding ", explicit_before, "/",
                   explicit_after, " (sizes >= 0, the rest >= 1, padding >= 0)");
  }
  // Bounding every argument keeps all the arithmetic below far from int64
  // overflow, whoever calls this (the shape function runs before any other
  // check).
  for (int64_t value : {input_size, filter_size, stride, dilation,
                        explicit_before, explicit_after}) {
    if (value > kMaxDim) {
      return Message("a ", dim_name, " size, stride, dilation or padding of ",
                     value, " exceeds the supported maximum of ", kMaxDim);
    }
  }
  const int64_t effective_filter = (filter_size - 1) * dilation + 1;
  switch (padding) {
    case Padding::kValid:
      *pad_before = *pad_after = 0;
      *output_size = input_size >= effective_filter
                         ? (input_size - effective_filter) / stride + 1
                         : 0;
      break;
    case Padding::kSame: {
      *output_size = (input_size + stride - 1) / stride;
      const int64_t needed = (*output_size - 1) * stride + effective_filter;
      const int64_t total = needed > input_size ? needed - input_size : 0;
      *pad_before = total / 2;
      *pad_after = total - *pad_before;
      break;
    }
    case Padding::kExplicit: {
      *pad_before = explicit_before;
      *pad_after = explicit_after;
      const int64_t padded = input_size + explicit_before + explicit_after;
      *output_size =
          padded >= effective_filter ? (padded - effective_filter) / stride + 1
                                     : 0;
      break;
    }
  }
  // TF rejects a VALID/explicit window larger than the (padded) input rather
  // than returning an empty output; do the same so both ops agree.
  if (padding != Padding::kSame && *output_size == 0 && input_size > 0) {
    return Message("input ", dim_name, " (", input_size, " plus padding ",
                   *pad_before + *pad_after,
                   ") is smaller than the dilated filter ", dim_name, " (",
                   effective_filter, ")");
  }
  return "";
}

std::string ComputeConvGeometry(int64_t N, int64_t H, int64_t W, int64_t C,
                                int64_t filter_h, int64_t filter_w,
                                int64_t filter_in, int64_t filter_out,
                                const ConvAttrs& attrs,
                                ConvGeometry* geometry) {
  if (N < 0 || H < 0 || W < 0 || C < 0) {
    return Message("input has a negative dimension: [", N, ", ", H, ", ", W,
                   ", ", C, "] (N, H, W, C)");
  }
  if (filter_h < 1 || filter_w < 1 || filter_in < 1 || filter_out < 1) {
    return Message("filter_shape must be 4 positive sizes (kh, kw, cin, cout), "
                   "got (", filter_h, ", ", filter_w, ", ", filter_in, ", ",
                   filter_out, ")");
  }
  if (filter_in != C) {
    return Message("filter_shape has ", filter_in,
                   " input channels but the input has ", C, " channels");
  }
  if (attrs.stride_h < 1 || attrs.stride_w < 1) {
    return Message("strides must be positive, got [", attrs.stride_h, ", ",
                   attrs.stride_w, "]");
  }
  if (attrs.dilation_h < 1 || attrs.dilation_w < 1) {
    return Message("dilations must be positive, got [", attrs.dilation_h, ", ",
                   attrs.dilation_w, "]");
  }
  if (attrs.padding == Padding::kExplicit &&
      (attrs.explicit_top < 0 || attrs.explicit_bottom < 0 ||
       attrs.explicit_left < 0 || attrs.explicit_right < 0)) {
    return Message("explicit_paddings must be non-negative, got [[",
                   attrs.explicit_top, ", ", attrs.explicit_bottom, "], [",
                   attrs.explicit_left, ", ", attrs.explicit_right, "]]");
  }
  ConvGeometry g;
  g.N = N;
  g.H = H;
  g.W = W;
  g.C = C;
  g.K = filter_out;
  g.R = filter_h;
  g.S = filter_w;
  g.stride_h = attrs.stride_h;
  g.stride_w = attrs.stride_w;
  g.dilation_h = attrs.dilation_h;
  g.dilation_w = attrs.dilation_w;
  g.data_format = attrs.data_format;
  std::string error = ComputeOutputSize(
      "height", H, filter_h, attrs.stride_h, attrs.dilation_h, attrs.padding,
      attrs.explicit_top, attrs.explicit_bottom, &g.P, &g.pad_top,
      &g.pad_bottom);
  if (!error.empty()) return error;
  error = ComputeOutputSize("width", W, filter_w, attrs.stride_w,
                           attrs.dilation_w, attrs.padding, attrs.explicit_left,
                           attrs.explicit_right, &g.Q, &g.pad_left,
                           &g.pad_right);
  if (!error.empty()) return error;

  // The kernels index with int32 inside one image and with int64 across the
  // batch; padded planes and stretched offsets must fit int32.
  const int64_t padded_h = H + g.pad_top + g.pad_bottom;
  const int64_t padded_w = W + g.pad_left + g.pad_right;
  const struct {
    const char* what;
    int64_t size;
  } sizes[] = {
      {"input", SaturatingProduct({N, H, W, C})},
      {"output", SaturatingProduct({N, g.P, g.Q, g.K})},
      {"padded input image", SaturatingProduct({padded_h, padded_w, C})},
      {"filter columns (kh*kw*cin)", SaturatingProduct({g.R, g.S, C})},
      {"dense filter", SaturatingProduct({g.R, g.S, C, g.K})},
  };
  for (const auto& entry : sizes) {
    if (entry.size > kInt32Max) {
      return Message("the ", entry.what, " has ", entry.size,
                     " elements, more than the 2^31-1 the kernels index");
    }
  }
  *geometry = g;
  return "";
}

std::string ValidateCsrFilter(int64_t num_rows, int64_t num_columns,
                              const int32_t* row_offsets,
                              int64_t num_row_offsets,
                              const int32_t* column_indices,
                              int64_t num_column_indices, int64_t num_values) {
  if (num_row_offsets != num_rows + 1) {
    return Message("row_offsets must have cout + 1 = ", num_rows + 1,
                   " entries, got ", num_row_offsets);
  }
  if (num_column_indices > kInt32Max) {
    return Message("column_indices has ", num_column_indices,
                   " entries, more than int32 row_offsets can address");
  }
  if (row_offsets[0] != 0) {
    return Message("row_offsets[0] must be 0, got ", row_offsets[0]);
  }
  for (int64_t row = 0; row < num_rows; ++row) {
    const int32_t begin = row_offsets[row];
    const int32_t end = row_offsets[row + 1];
    if (end < begin) {
      return Message("row_offsets must not decrease: row_offsets[", row + 1,
                     "] = ", end, " < row_offsets[", row, "] = ", begin);
    }
    if (end > num_column_indices) {
      return Message("row_offsets[", row + 1, "] = ", end,
                     " exceeds the number of column_indices (",
                     num_column_indices, ")");
    }
  }
  if (row_offsets[num_rows] != num_column_indices) {
    return Message("row_offsets[-1] = ", row_offsets[num_rows],
                   " must equal the number of column_indices (",
                   num_column_indices, ")");
  }
  if (num_values != num_column_indices) {
    return Message("values has ", num_values, " entries but column_indices has ",
                   num_column_indices, "; both must have row_offsets[-1]");
  }
  // The op validates on every call, and at batch 1 a branchy scan costs a
  // sizeable fraction of the convolution itself: first a branch-free pass
  // per row that the compiler vectorizes, then, only if it found a problem,
  // the scan that names the first bad position.
  const uint32_t column_limit = static_cast<uint32_t>(
      std::min<int64_t>(num_columns, std::numeric_limits<uint32_t>::max()));
  bool any_bad = false;
  for (int64_t row = 0; row < num_rows && !any_bad; ++row) {
    const int32_t begin = row_offsets[row];
    const int32_t end = row_offsets[row + 1];
    if (begin == end) continue;
    // A negative column wraps to a huge unsigned value, caught by one test.
    uint32_t bad = static_cast<uint32_t>(column_indices[begin]) >= column_limit;
    for (int32_t i = begin + 1; i < end; ++i) {
      bad |= (static_cast<uint32_t>(column_indices[i]) >= column_limit) |
             (column_indices[i] <= column_indices[i - 1]);
    }
    any_bad = bad != 0;
  }
  if (!any_bad) return "";
  for (int64_t row = 0; row < num_rows; ++row) {
    for (int32_t i = row_offsets[row]; i < row_offsets[row + 1]; ++i) {
      const int32_t column = column_indices[i];
      if (column < 0 || column >= num_columns) {
        return Message("column_indices[", i, "] = ", column,
                       " is outside [0, kh*kw*cin = ", num_columns, ")");
      }
      if (i > row_offsets[row] && column <= column_indices[i - 1]) {
        return Message("column_indices must strictly ascend within a row: "
                       "column_indices[", i, "] = ", column,
                       " follows ", column_indices[i - 1], " in row ", row);
      }
    }
  }
  return "";
}

}  // namespace escort
