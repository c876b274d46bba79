// GPU OpKernel of Escort>CsrConv2D (fp32). Built only in the GPU flavour
// (GOOGLE_CUDA=1). row_offsets and column_indices live in host memory so
// they are validated on the host before anything is launched; they are then
// copied to the device on the op's own stream.
#if GOOGLE_CUDA
#ifndef EIGEN_USE_GPU
#define EIGEN_USE_GPU  // Eigen::GpuDevice, for the op's stream
#endif

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cc/kernels/csr_conv_gpu.h"
#include "cc/tf/csr_conv_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
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

// Copies `bytes` of host memory to `device` on `stream`. The source is first
// copied into a buffer the stream frees itself once the transfer is done, so
// the caller's tensor may be released as soon as Compute returns even if
// the transfer is still in flight.
absl::Status CopyToDevice(const void* host, size_t bytes, void* device,
                          cudaStream_t stream) {
  if (bytes == 0) return absl::OkStatus();
  void* staging = std::malloc(bytes);
  if (staging == nullptr) {
    return errors::ResourceExhausted("Escort>CsrConv2D: no host memory for ",
                                     bytes, " bytes of CSR indices");
  }
  std::memcpy(staging, host, bytes);
  cudaError_t error =
      cudaMemcpyAsync(device, staging, bytes, cudaMemcpyHostToDevice, stream);
  if (error == cudaSuccess) {
    error = cudaLaunchHostFunc(stream, std::free, staging);
  }
  if (error != cudaSuccess) {
    // Nothing was queued that could still read the buffer once the copy
    // failed to enqueue, and a failed host-function launch never runs it.
    cudaStreamSynchronize(stream);
    std::free(staging);
  }
  return CudaStatus(error, "copying the CSR indices to the device");
}

class CsrConv2DGpuOp : public CsrConv2DOpBase {
 public:
  explicit CsrConv2DGpuOp(OpKernelConstruction* context)
      : CsrConv2DOpBase(context) {}

  void Compute(OpKernelContext* context) override {
    escort::ConvGeometry geometry;
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, ValidateAndAllocate(context, &geometry, &output));
    if (output->NumElements() == 0) return;

    const Tensor& row_offsets = context->input(1);
    const Tensor& column_indices = context->input(2);
    const Tensor& values = context->input(3);
    const Tensor& bias = context->input(4);
    const cudaStream_t stream = context->eigen_device<GPUDevice>().stream();

    Tensor device_row_offsets, device_column_indices;
    OP_REQUIRES_OK(context,
                   context->allocate_temp(DT_INT32, row_offsets.shape(),
                                          &device_row_offsets));
    OP_REQUIRES_OK(context,
                   context->allocate_temp(DT_INT32, column_indices.shape(),
                                          &device_column_indices));
    OP_REQUIRES_OK(context,
                   CopyToDevice(row_offsets.flat<int32_t>().data(),
                                row_offsets.TotalBytes(),
                                device_row_offsets.flat<int32_t>().data(),
                                stream));
    OP_REQUIRES_OK(context,
                   CopyToDevice(column_indices.flat<int32_t>().data(),
                                column_indices.TotalBytes(),
                                device_column_indices.flat<int32_t>().data(),
                                stream));

    OP_REQUIRES_OK(
        context,
        CudaStatus(escort::CsrConv2DGpu(
                       geometry, context->input(0).flat<float>().data(),
                       device_row_offsets.flat<int32_t>().data(),
                       device_column_indices.flat<int32_t>().data(),
                       values.flat<float>().data(), values.NumElements(),
                       bias.NumElements() > 0 ? bias.flat<float>().data()
                                              : nullptr,
                       activation(), output->flat<float>().data(), stream),
                   "launching the sparse convolution kernel"));
  }
};

REGISTER_KERNEL_BUILDER(Name("Escort>CsrConv2D")
                            .Device(DEVICE_GPU)
                            .TypeConstraint<float>("T")
                            .HostMemory("row_offsets")
                            .HostMemory("column_indices"),
                        CsrConv2DGpuOp);

}  // namespace
}  // namespace escort_tf
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
