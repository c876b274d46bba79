// Input validation shared by all devices, and the CPU OpKernels of
// Escort>CsrConv2D and Escort>CsrConv2DV2.
#include "cc/tf/csr_conv_kernels.h"

#include <algorithm>
#include <cstdint>
#include <string>

#include "cc/kernels/csr_conv.h"
#include "cc/tf/csr_conv_attrs.h"
#include "cc/tf/pool_parallel_for.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace tensorflow {
namespace escort_tf {

CsrConv2DOpBase::CsrConv2DOpBase(OpKernelConstruction* context)
    : OpKernel(context) {
  OP_REQUIRES_OK(context,
                 ParseCsrConvAttrs(
                     [context](const char* name, auto* value) {
                       return context->GetAttr(name, value);
                     },
                     &attrs_, &filter_shape_, &activation_));
}

absl::Status CsrConv2DOpBase::ValidateAndAllocate(
    OpKernelContext* context, escort::ConvGeometry* geometry,
    Tensor** output) {
  // The filter first: no output is allocated for a malformed one.
  TF_RETURN_IF_ERROR(ValidateShapes(context, geometry));
  TF_RETURN_IF_ERROR(ValidateFilter(context, *geometry));
  return AllocateOutput(context, *geometry, output);
}

absl::Status CsrConv2DOpBase::ValidateShapesAndAllocate(
    OpKernelContext* context, escort::ConvGeometry* geometry,
    Tensor** output) {
  TF_RETURN_IF_ERROR(ValidateShapes(context, geometry));
  return AllocateOutput(context, *geometry, output);
}

absl::Status CsrConv2DOpBase::ValidateShapes(
    OpKernelContext* context, escort::ConvGeometry* geometry) const {
  const Tensor& input = context->input(0);
  const Tensor& row_offsets = context->input(1);
  const Tensor& column_indices = context->input(2);
  const Tensor& values = context->input(3);
  const Tensor& bias = context->input(4);

  if (input.dims() != 4) {
    return errors::InvalidArgument("input must be 4-D, got shape ",
                                   input.shape().DebugString());
  }
  const struct {
    const char* name;
    const Tensor& tensor;
  } vectors[] = {{"row_offsets", row_offsets},
                 {"column_indices", column_indices},
                 {"values", values},
                 {"bias", bias}};
  for (const auto& vector : vectors) {
    if (vector.tensor.dims() != 1) {
      return errors::InvalidArgument(vector.name, " must be 1-D, got shape ",
                                     vector.tensor.shape().DebugString());
    }
  }
  const int64_t out_channels = filter_shape_[3];
  if (bias.NumElements() != 0 && bias.NumElements() != out_channels) {
    return errors::InvalidArgument("bias must be empty or have cout = ",
                                   out_channels, " entries, got ",
                                   bias.NumElements());
  }

  const bool nhwc = attrs_.data_format == escort::DataFormat::kNHWC;
  const std::string geometry_error = escort::ComputeConvGeometry(
      input.dim_size(0), input.dim_size(nhwc ? 1 : 2),
      input.dim_size(nhwc ? 2 : 3), input.dim_size(nhwc ? 3 : 1),
      filter_shape_[0], filter_shape_[1], filter_shape_[2], out_channels,
      attrs_, geometry);
  if (!geometry_error.empty()) {
    return errors::InvalidArgument(geometry_error);
  }
  return absl::OkStatus();
}

absl::Status CsrConv2DOpBase::ValidateFilter(
    OpKernelContext* context, const escort::ConvGeometry& geometry) const {
  const Tensor& row_offsets = context->input(1);
  const Tensor& column_indices = context->input(2);
  const std::string filter_error = escort::ValidateCsrFilter(
      geometry.K, geometry.FilterColumns(),
      row_offsets.flat<int32_t>().data(), row_offsets.NumElements(),
      column_indices.flat<int32_t>().data(), column_indices.NumElements(),
      context->input(3).NumElements());
  if (!filter_error.empty()) {
    return errors::InvalidArgument(filter_error);
  }
  return absl::OkStatus();
}

absl::Status CsrConv2DOpBase::AllocateOutput(
    OpKernelContext* context, const escort::ConvGeometry& geometry,
    Tensor** output) const {
  const TensorShape output_shape =
      attrs_.data_format == escort::DataFormat::kNHWC
          ? TensorShape({geometry.N, geometry.P, geometry.Q, geometry.K})
          : TensorShape({geometry.N, geometry.K, geometry.P, geometry.Q});
  return context->allocate_output(0, output_shape, output);
}

namespace {

// Converts a tensor to float: the CPU kernel computes in fp32 and half /
// bfloat16 layers are served by casting around it.
template <typename T>
absl::Status ToFloat(OpKernelContext* context, const Tensor& tensor,
                     Tensor* converted) {
  if constexpr (std::is_same_v<T, float>) {
    *converted = tensor;
    return absl::OkStatus();
  } else {
    TF_RETURN_IF_ERROR(
        context->allocate_temp(DT_FLOAT, tensor.shape(), converted));
    converted->flat<float>() = tensor.flat<T>().template cast<float>();
    return absl::OkStatus();
  }
}

// T: the input's and output's type; U: the values' and bias's (T, or float
// for V2's mixed precision).
template <typename T, typename U>
class CsrConv2DCpuOp : public CsrConv2DOpBase {
 public:
  explicit CsrConv2DCpuOp(OpKernelConstruction* context)
      : CsrConv2DOpBase(context) {}

  void Compute(OpKernelContext* context) override {
    thread::ThreadPool* const pool =
        context->device()->tensorflow_cpu_worker_threads()->workers;
    WakePoolThreads(pool, RoughCycles(context, in_channels()));
    escort::ConvGeometry geometry;
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, ValidateAndAllocate(context, &geometry, &output));
    if (output->NumElements() == 0) return;

    Tensor input, values, bias;
    OP_REQUIRES_OK(context, ToFloat<T>(context, context->input(0), &input));
    OP_REQUIRES_OK(context, ToFloat<U>(context, context->input(3), &values));
    OP_REQUIRES_OK(context, ToFloat<U>(context, context->input(4), &bias));
    Tensor float_output = *output;
    if constexpr (!std::is_same_v<T, float>) {
      OP_REQUIRES_OK(context, context->allocate_temp(
                                  DT_FLOAT, output->shape(), &float_output));
    }

    const escort::ParallelFor parallel_for = PoolParallelFor(pool);
    escort::CsrConv2DCpu(
        geometry, input.flat<float>().data(),
        context->input(1).flat<int32_t>().data(),
        context->input(2).flat<int32_t>().data(), values.flat<float>().data(),
        bias.NumElements() > 0 ? bias.flat<float>().data() : nullptr,
        activation(), float_output.flat<float>().data(), parallel_for);

    if constexpr (!std::is_same_v<T, float>) {
      output->flat<T>() = float_output.flat<float>().template cast<T>();
    }
  }

 private:
  // The kernel's cycles, roughly, before anything is validated (for
  // WakePoolThreads): an FMA per nonzero per 8 input positions, as many as
  // the output's at stride 1. Reads only sizes, so any input is safe.
  static int64_t RoughCycles(OpKernelContext* context, int64_t in_channels) {
    const double positions =
        static_cast<double>(context->input(0).NumElements()) /
        static_cast<double>(std::max<int64_t>(1, in_channels));
    const double cycles =
        positions * static_cast<double>(context->input(3).NumElements()) / 8;
    return static_cast<int64_t>(std::min(cycles, 1e18));
  }
};

#define REGISTER_CPU(T, U)                                               \
  REGISTER_KERNEL_BUILDER(Name("Escort>CsrConv2DV2")                     \
                              .Device(DEVICE_CPU)                        \
                              .TypeConstraint<T>("T")                    \
                              .TypeConstraint<U>("U"),                   \
                          CsrConv2DCpuOp<T, U>);
ESCORT_CSR_CONV2D_V2_TYPES(REGISTER_CPU)
#undef REGISTER_CPU
#define REGISTER_CPU(T)                                                    \
  REGISTER_KERNEL_BUILDER(                                                 \
      Name("Escort>CsrConv2D").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
      CsrConv2DCpuOp<T, T>)
REGISTER_CPU(float);
REGISTER_CPU(Eigen::half);
REGISTER_CPU(Eigen::bfloat16);
#undef REGISTER_CPU

}  // namespace
}  // namespace escort_tf
}  // namespace tensorflow
