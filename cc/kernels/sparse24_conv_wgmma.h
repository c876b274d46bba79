// The Hopper path of the 2:4 tensor-core convolution: the same implicit
// GEMM as sparse24_conv_gpu.cu, on the warpgroup sparse MMA
// (wgmma.mma_async.sp, sm_90a only). Internal to sparse24_conv_gpu.cu, which
// dispatches here when the device and the geometry allow it.
#ifndef ESCORT_CC_KERNELS_SPARSE24_CONV_WGMMA_H_
#define ESCORT_CC_KERNELS_SPARSE24_CONV_WGMMA_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cc/kernels/cast_gpu.h"
#include "cc/kernels/csr_conv.h"

namespace escort {

// Channels per pipeline stage of the wgmma kernel; where C % 64 == 32 each
// tap's last stage holds 32 (the other half zero filled).
inline constexpr int64_t kSparse24WgmmaStageChannels = 64;

// Sets `*available` to whether this build has the wgmma kernel for the
// current device (compute capability 9.0, code built for sm_90a), and if so
// allows its kernels the shared memory they need. Call once per device.
cudaError_t PrepareSparse24Wgmma(bool* available);

// The workspace with which Sparse24Conv2DWgmma splits `geometry` on a
// device of `num_sms` multiprocessors (0: it does not split it).
size_t Sparse24WgmmaWorkspaceBytes(const ConvGeometry& geometry, int num_sms);

// Whether Sparse24Conv2DWgmma loads `geometry` with the copy engine (its TMA
// kernel) rather than cp.async, for a 16-byte aligned input on a device of
// `num_sms` multiprocessors; false in a build without the wgmma kernel.
bool Sparse24WgmmaLoadsWithTma(const ConvGeometry& geometry, int num_sms);

// As Sparse24Conv2DGpu, on a device PrepareSparse24Wgmma found available,
// for NHWC geometries with C % kSparse24StepChannels == 0 and a nonempty
// output.
cudaError_t Sparse24Conv2DWgmma(HalfType type, const ConvGeometry& geometry,
                                const void* input, const void* packed_values,
                                const uint32_t* metadata, const void* bias,
                                Activation activation, void* output,
                                int num_sms, void* workspace,
                                size_t workspace_bytes, cudaStream_t stream);

}  // namespace escort

#endif  // ESCORT_CC_KERNELS_SPARSE24_CONV_WGMMA_H_
