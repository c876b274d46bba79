// Registration and shape function of Escort>CsrConv2D and Escort>CsrConv2DV2.
#include <cstdint>
#include <string>
#include <vector>

#include "cc/kernels/csr_conv.h"
#include "cc/tf/csr_conv_attrs.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {
namespace escort_tf {
namespace {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

// Spatial output size when the input size is known; unknown otherwise, so
// that models with dynamic height/width still build.
absl::Status InferSpatialDim(InferenceContext* c, DimensionHandle input_dim,
                             int64_t filter_size, int64_t stride,
                             int64_t dilation, const escort::ConvAttrs& attrs,
                             int64_t explicit_before, int64_t explicit_after,
                             const char* dim_name, DimensionHandle* out) {
  if (!c->ValueKnown(input_dim)) {
    *out = c->UnknownDim();
    return absl::OkStatus();
  }
  int64_t output_size = 0, pad_before = 0, pad_after = 0;
  const std::string error = escort::ComputeOutputSize(
      dim_name, c->Value(input_dim), filter_size, stride, dilation,
      attrs.padding, explicit_before, explicit_after, &output_size,
      &pad_before, &pad_after);
  if (!error.empty()) return errors::InvalidArgument(error);
  *out = c->MakeDim(output_size);
  return absl::OkStatus();
}

absl::Status CsrConv2DShape(InferenceContext* c) {
  escort::ConvAttrs attrs;
  std::vector<int64_t> filter_shape;
  escort::Activation activation;
  TF_RETURN_IF_ERROR(ParseCsrConvAttrs(
      [c](const char* name, auto* value) { return c->GetAttr(name, value); },
      &attrs, &filter_shape, &activation));

  ShapeHandle input;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &input));
  for (int i = 1; i <= 4; ++i) {
    ShapeHandle vector;
    TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 1, &vector));
  }
  const bool nhwc = attrs.data_format == escort::DataFormat::kNHWC;
  const int h_axis = nhwc ? 1 : 2, w_axis = nhwc ? 2 : 3, c_axis = nhwc ? 3 : 1;

  DimensionHandle channels;
  TF_RETURN_IF_ERROR(
      c->WithValue(c->Dim(input, c_axis), filter_shape[2], &channels));
  DimensionHandle out_h, out_w;
  TF_RETURN_IF_ERROR(InferSpatialDim(
      c, c->Dim(input, h_axis), filter_shape[0], attrs.stride_h,
      attrs.dilation_h, attrs, attrs.explicit_top, attrs.explicit_bottom,
      "height", &out_h));
  TF_RETURN_IF_ERROR(InferSpatialDim(
      c, c->Dim(input, w_axis), filter_shape[1], attrs.stride_w,
      attrs.dilation_w, attrs, attrs.explicit_left, attrs.explicit_right,
      "width", &out_w));
  DimensionHandle out_k = c->MakeDim(filter_shape[3]);
  DimensionHandle batch = c->Dim(input, 0);
  c->set_output(0, nhwc ? c->MakeShape({batch, out_h, out_w, out_k})
                        : c->MakeShape({batch, out_k, out_h, out_w}));
  return absl::OkStatus();
}

}  // namespace

// Both ops' signature: values and bias have the type VALUE_TYPE names.
#define ESCORT_CSR_CONV2D_SIGNATURE(VALUE_TYPE) \
  .Input("input: T") \
  .Input("row_offsets: int32") \
  .Input("column_indices: int32") \
  .Input("values: " VALUE_TYPE) \
  .Input("bias: " VALUE_TYPE) \
  .Output("output: T") \
  .Attr("T: {float, half, bfloat16}") \
  .Attr("filter_shape: list(int)") \
  .Attr("strides: list(int) = [1, 1]") \
  .Attr("padding: {'SAME', 'VALID', 'EXPLICIT'}") \
  .Attr("explicit_paddings: list(int) = []") \
  .Attr("dilations: list(int) = [1, 1]") \
  .Attr("data_format: {'NHWC', 'NCHW'} = 'NHWC'") \
  .Attr("activation: {'NONE', 'RELU', 'RELU6'} = 'NONE'") \
  .Attr("engine: {'AUTO', 'CUDA_CORES', 'TENSOR_CORES_2_4'} = 'AUTO'") \
  .SetShapeFn(CsrConv2DShape)

REGISTER_OP("Escort>CsrConv2D")
    ESCORT_CSR_CONV2D_SIGNATURE("T")
    .Doc(R"doc(
Direct sparse 2-D convolution with a CSR filter (Escort).

Computes activation(conv2d(input, dense_filter) + bias), where dense_filter
(HWIO, shape filter_shape) is given in CSR form: row k of the CSR matrix is
output channel k, and column j = (r * kw + s) * cin + c is filter tap
(r, s, c). Column indices ascend within each row. Forward only.

input: 4-D, in data_format.
row_offsets: [cout + 1], non-decreasing, from 0 to nnz.
column_indices: [nnz], each in [0, kh * kw * cin).
values: [nnz] nonzero weights.
bias: [cout], or empty for no bias.
filter_shape: (kh, kw, cin, cout) of the dense filter.
strides: [stride_h, stride_w].
padding: SAME, VALID, or EXPLICIT (then explicit_paddings holds
  [top, bottom, left, right]).
dilations: [dilation_h, dilation_w].
activation: NONE, RELU or RELU6, fused after the bias.
engine: which GPU kernel runs the op; the CPU has one kernel and ignores it.
  CUDA_CORES is the direct CSR kernel. TENSOR_CORES_2_4 runs float16 and
  bfloat16 NHWC convolutions on sparse tensor cores (compute capability 8.0+)
  and needs a filter that is 2:4 along the input channels (at most 2
  nonzeros in each aligned group of 4) with cin a multiple of 32; otherwise
  the op fails with InvalidArgument saying which condition is not met. AUTO
  takes TENSOR_CORES_2_4 where all of that holds, else CUDA_CORES.
)doc");

// Keras mixed precision keeps a layer's variables in float32 and computes in
// float16 or bfloat16: V2 takes such values and bias as they are, where
// Escort>CsrConv2D needed a cast of each (two more ops per layer and call,
// and for tensor cores a repacking of the values, which the op keeps only
// while it is fed the same values buffer).
REGISTER_OP("Escort>CsrConv2DV2")
    ESCORT_CSR_CONV2D_SIGNATURE("U")
    .Attr("U: {float, half, bfloat16}")
    .Doc(R"doc(
Escort>CsrConv2D whose values and bias have type U: T, or float for a
float16/bfloat16 input (mixed precision). The op computes with the float
values as they are where it computes in float (the CPU, the GPU's CUDA-core
kernel) and rounds them to T for tensor cores, as a cast before
Escort>CsrConv2D would. Other inputs and attributes as Escort>CsrConv2D;
the kernels registered are those of U == T and of U == float.
)doc");

#undef ESCORT_CSR_CONV2D_SIGNATURE

}  // namespace escort_tf
}  // namespace tensorflow
