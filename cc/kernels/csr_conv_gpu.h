// CUDA entry point of the Escort direct sparse convolution (see csr_conv.h
// for the CSR format and the geometry). Framework-free: callers pass their
// own stream and get a cudaError_t back. The tile shape of a launch,
// CsrConvGpuConfig, and its planner are in csr_conv_gpu_plan.h.
#ifndef ESCORT_CC_KERNELS_CSR_CONV_GPU_H_
#define ESCORT_CC_KERNELS_CSR_CONV_GPU_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "cc/kernels/csr_conv.h"
#include "cc/kernels/csr_conv_gpu_plan.h"

namespace escort {

// fp32 sparse convolution on `stream`. All pointers are device memory:
//   input        geometry.InputSize() floats in geometry.data_format
//   row_offsets  K + 1 int32, column_indices / values `nnz` entries each
//   bias         K floats, or nullptr
//   output       geometry.OutputSize() floats in geometry.data_format
// The arguments must have passed ValidateCsrFilter (on a host copy) and
// ComputeConvGeometry. Returns the launch status (cudaGetLastError after
// the launch); the work itself completes asynchronously on `stream`.
// Nothing is launched (cudaSuccess) when N, P, Q or K is zero. Returns
// cudaErrorInvalidValue when no tile fits in shared memory, which takes an
// effective (dilated) filter window of roughly 150 x 150 or more.
// The tile is planned once per geometry, nnz and device and kept in a
// process-wide cache of the 256 most recently used plans; thread-safe.
cudaError_t CsrConv2DGpu(const ConvGeometry& geometry, const float* input,
                         const int32_t* row_offsets,
                         const int32_t* column_indices, const float* values,
                         int64_t nnz, const float* bias, Activation activation,
                         float* output, cudaStream_t stream);

// The tile shape CsrConv2DGpu would pick for `geometry` and `nnz` nonzeros
// on the current device's compiled kernels (their register counts), but
// with `num_sms` multiprocessors and `clusters` (whether split_c > 1 may be
// used) as given: PlanCsrConvGpu (csr_conv_gpu_plan.h) with this device's
// info. For the tuning harness; plans anew on every call.
CsrConvGpuConfig ChooseCsrConvGpuConfig(const ConvGeometry& geometry,
                                        int64_t nnz, int num_sms,
                                        bool clusters);

// CsrConv2DGpu with an explicit tile shape, for tuning and tests. Returns
// cudaErrorInvalidValue for a config outside the valid set
// (gpu_plan::ConfigValid) or over the device's shared memory per block.
cudaError_t CsrConv2DGpuWithConfig(const ConvGeometry& geometry,
                                   const float* input,
                                   const int32_t* row_offsets,
                                   const int32_t* column_indices,
                                   const float* values, int64_t nnz,
                                   const float* bias, Activation activation,
                                   float* output,
                                   const CsrConvGpuConfig& config,
                                   cudaStream_t stream);

}  // namespace escort

#endif  // ESCORT_CC_KERNELS_CSR_CONV_GPU_H_
