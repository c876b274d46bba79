// GPU OpKernels of Escort>CsrConv2D. Built only in the GPU flavour
// (GOOGLE_CUDA=1).
//
// row_offsets and column_indices are host-memory inputs, so that they are
// validated on the host before anything is launched. Validating and
// uploading them costs time linear in the filter, so each kernel keeps the
// last filter it validated, with its device copy, and reuses it while the
// op is fed the very same host buffers: the kernel holds a reference to
// them, and TensorFlow copies a buffer that is still referenced before
// updating a variable in place, so a buffer seen again holds the values
// that were validated. Any other buffer is validated and uploaded anew.
// The tile choice is cached by the layer-1 launcher, keyed by geometry.
#if GOOGLE_CUDA
#ifndef EIGEN_USE_GPU
#define EIGEN_USE_GPU  // Eigen::GpuDevice, for the op's stream
#endif

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <type_traits>

#include "cc/kernels/cast_gpu.h"
#include "cc/kernels/csr_conv_gpu.h"
#include "cc/tf/csr_conv_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/mutex.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tensorflow {
namespace escort_tf {
namespace {

using GPUDevice = Eigen::GpuDevice;

absl::Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  return errors::Internal("Escort>CsrConv2D: ", what, " failed: ",
                          cudaGetErrorString(error));
}

// A validated CSR index pair and its device copy.
struct DeviceFilter {
  Tensor host_row_offsets, host_column_indices;
  Tensor row_offsets, column_indices;  // device memory

  bool Serves(const Tensor& row_offsets_in,
              const Tensor& column_indices_in) const {
    return host_row_offsets.SharesBufferWith(row_offsets_in) &&
           host_row_offsets.NumElements() == row_offsets_in.NumElements() &&
           host_column_indices.SharesBufferWith(column_indices_in) &&
           host_column_indices.NumElements() ==
               column_indices_in.NumElements();
  }
};

absl::Status Upload(const Tensor& host, Tensor* device, cudaStream_t stream) {
  if (host.TotalBytes() == 0) return absl::OkStatus();
  return CudaStatus(
      cudaMemcpyAsync(device->data(), host.data(), host.TotalBytes(),
                      cudaMemcpyHostToDevice, stream),
      "copying the CSR indices to the device");
}

// 16-bit float types the op serves on the GPU by converting to fp32 around
// the fp32 kernel; Eigen's types have the layout of CUDA's.
template <typename T>
constexpr escort::HalfType HalfTypeOf() {
  return std::is_same_v<T, Eigen::half> ? escort::HalfType::kFloat16
                                        : escort::HalfType::kBFloat16;
}

// `tensor` as device floats: the tensor itself for float, else a converted
// temporary.
template <typename T>
absl::Status AsFloat(OpKernelContext* context, const Tensor& tensor,
                     cudaStream_t stream, Tensor* converted) {
  if constexpr (std::is_same_v<T, float>) {
    *converted = tensor;
    return absl::OkStatus();
  } else {
    TF_RETURN_IF_ERROR(
        context->allocate_temp(DT_FLOAT, tensor.shape(), converted));
    return CudaStatus(
        escort::HalfToFloatGpu(HalfTypeOf<T>(), tensor.data(),
                               converted->flat<float>().data(),
                               tensor.NumElements(), stream),
        "converting an input to float");
  }
}

template <typename T>
class CsrConv2DGpuOp : public CsrConv2DOpBase {
 public:
  explicit CsrConv2DGpuOp(OpKernelConstruction* context)
      : CsrConv2DOpBase(context) {}

  void Compute(OpKernelContext* context) override {
    escort::ConvGeometry geometry;
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context,
                   ValidateShapesAndAllocate(context, &geometry, &output));
    const cudaStream_t stream = context->eigen_device<GPUDevice>().stream();
    std::shared_ptr<const DeviceFilter> filter;
    OP_REQUIRES_OK(context, GetFilter(context, geometry, stream, &filter));
    if (output->NumElements() == 0) return;

    Tensor input, values, bias, float_output = *output;
    OP_REQUIRES_OK(context, AsFloat<T>(context, context->input(0), stream,
                                       &input));
    OP_REQUIRES_OK(context, AsFloat<T>(context, context->input(3), stream,
                                       &values));
    OP_REQUIRES_OK(context, AsFloat<T>(context, context->input(4), stream,
                                       &bias));
    if constexpr (!std::is_same_v<T, float>) {
      OP_REQUIRES_OK(context, context->allocate_temp(
                                  DT_FLOAT, output->shape(), &float_output));
    }
    const cudaError_t launched = escort::CsrConv2DGpu(
        geometry, input.flat<float>().data(),
        filter->row_offsets.flat<int32_t>().data(),
        filter->column_indices.flat<int32_t>().data(),
        values.flat<float>().data(), values.NumElements(),
        bias.NumElements() > 0 ? bias.flat<float>().data() : nullptr,
        activation(), float_output.flat<float>().data(), stream);
    // Every input was validated, so the launcher's one invalid-value case
    // is a window whose tile does not fit in shared memory.
    OP_REQUIRES(
        context, launched != cudaErrorInvalidValue,
        errors::InvalidArgument(
            "dilations/filter_shape: the dilated filter window (",
            (geometry.R - 1) * geometry.dilation_h + 1, " x ",
            (geometry.S - 1) * geometry.dilation_w + 1,
            ") is too large for the GPU kernel's shared-memory tile; run "
            "this op on the CPU (tf.device('/CPU:0'))"));
    OP_REQUIRES_OK(context, CudaStatus(launched,
                                       "launching the sparse convolution "
                                       "kernel"));
    if constexpr (!std::is_same_v<T, float>) {
      OP_REQUIRES_OK(
          context,
          CudaStatus(escort::FloatToHalfGpu(
                         HalfTypeOf<T>(), float_output.flat<float>().data(),
                         output->data(), output->NumElements(), stream),
                     "converting the output from float"));
    }
  }

 private:
  // The device copy of this call's CSR indices: the cached one when the
  // inputs are the buffers it was made from, else a newly validated and
  // uploaded one, which then replaces it. Held through a shared_ptr so that
  // a concurrent replacement leaves this call's copy alive until launch;
  // the kernels that read it later are ordered on the stream, where the
  // allocator reuses freed memory only after them.
  absl::Status GetFilter(OpKernelContext* context,
                         const escort::ConvGeometry& geometry,
                         cudaStream_t stream,
                         std::shared_ptr<const DeviceFilter>* filter) {
    const Tensor& row_offsets = context->input(1);
    const Tensor& column_indices = context->input(2);
    {
      tf_shared_lock lock(mu_);
      if (filter_ != nullptr && filter_->Serves(row_offsets, column_indices)) {
        *filter = filter_;
        return absl::OkStatus();
      }
    }
    TF_RETURN_IF_ERROR(ValidateFilter(context, geometry));
    auto fresh = std::make_shared<DeviceFilter>();
    fresh->host_row_offsets = row_offsets;
    fresh->host_column_indices = column_indices;
    TF_RETURN_IF_ERROR(context->allocate_temp(DT_INT32, row_offsets.shape(),
                                              &fresh->row_offsets));
    TF_RETURN_IF_ERROR(context->allocate_temp(
        DT_INT32, column_indices.shape(), &fresh->column_indices));
    TF_RETURN_IF_ERROR(Upload(row_offsets, &fresh->row_offsets, stream));
    TF_RETURN_IF_ERROR(
        Upload(column_indices, &fresh->column_indices, stream));
    // The host buffers may be pinned, so the copies may still be reading
    // them; they must outlive the copies even if this entry is replaced
    // at once. Waiting here costs once per new filter, not per call.
    TF_RETURN_IF_ERROR(
        CudaStatus(cudaStreamSynchronize(stream), "copying the CSR indices"));
    mutex_lock lock(mu_);
    filter_ = fresh;
    *filter = std::move(fresh);
    return absl::OkStatus();
  }

  mutex mu_;
  std::shared_ptr<const DeviceFilter> filter_ TF_GUARDED_BY(mu_);
};

#define REGISTER_GPU(T)                                   \
  REGISTER_KERNEL_BUILDER(Name("Escort>CsrConv2D")        \
                              .Device(DEVICE_GPU)         \
                              .TypeConstraint<T>("T")     \
                              .HostMemory("row_offsets")  \
                              .HostMemory("column_indices"), \
                          CsrConv2DGpuOp<T>)
REGISTER_GPU(float);
REGISTER_GPU(Eigen::half);
REGISTER_GPU(Eigen::bfloat16);
#undef REGISTER_GPU

}  // namespace
}  // namespace escort_tf
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
