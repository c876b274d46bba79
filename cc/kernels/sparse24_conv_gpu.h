// CUDA entry points of the 2:4 tensor-core convolution: an implicit GEMM
// (no im2col buffer) on mma.sp with 16-bit inputs and fp32 accumulation.
// The filter's packed form is described in sparse24_conv.h. Framework-free:
// callers pass their stream and get a cudaError_t back.
#ifndef ESCORT_CC_KERNELS_SPARSE24_CONV_GPU_H_
#define ESCORT_CC_KERNELS_SPARSE24_CONV_GPU_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cc/kernels/cast_gpu.h"
#include "cc/kernels/csr_conv.h"

namespace escort {

// Whether the current device has sparse tensor cores (compute capability
// 8.0 or newer) and this build has code for it.
bool Sparse24Supported();

// packed[i] = value_index[i] < 0 ? 0 : values[value_index[i]] for i <
// num_packed, on `stream`: fills the packed values of a Sparse24Layout from
// the CSR values. All pointers are device memory; `values` and `packed` hold
// 16-bit values (either type: only bits move). value_index entries must be
// < the values' length.
cudaError_t PackSparse24ValuesGpu(const int32_t* value_index,
                                  int64_t num_packed, const void* values,
                                  void* packed, cudaStream_t stream);

// out = activation(conv2d(input, filter) + bias) on `stream`, NHWC only.
// All pointers are device memory, 16-bit values of `type`:
//   input          geometry.InputSize() values, 16-byte aligned
//   packed_values  layout.NumPackedValues() values (PackSparse24ValuesGpu)
//   metadata       layout.metadata
//   bias           K values, or nullptr
//   output         geometry.OutputSize() values
// `geometry` must have passed ComputeConvGeometry. Products are summed in fp32 and rounded
// once. On compute capability 9.0 NHWC runs the wgmma kernel
// (sparse24_conv_wgmma.h) when the build has it, everything else the mma.sp
// one. Returns cudaErrorNotSupported unless Sparse24Supported() and
// geometry.data_format is NHWC with C % 32 == 0, else the launch status;
// nothing is launched for an empty output.
// `workspace` (device memory of workspace_bytes, or nullptr) lets a
// convolution whose grid would leave multiprocessors idle split its filter
// columns across more blocks (split-K), when it holds at least
// Sparse24WorkspaceBytes(geometry); the parts are added in a fixed order, so
// results do not depend on it.
cudaError_t Sparse24Conv2DGpu(HalfType type, const ConvGeometry& geometry,
                              const void* input, const void* packed_values,
                              const uint32_t* metadata, const void* bias,
                              Activation activation, void* output,
                              cudaStream_t stream, void* workspace = nullptr,
                              size_t workspace_bytes = 0);

// Sets `*bytes` to the workspace with which Sparse24Conv2DGpu splits
// `geometry` on the current device (0: it would not).
cudaError_t Sparse24WorkspaceBytes(const ConvGeometry& geometry, size_t* bytes);

}  // namespace escort

#endif  // ESCORT_CC_KERNELS_SPARSE24_CONV_GPU_H_
