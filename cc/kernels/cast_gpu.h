// Conversions between 16-bit floats and fp32 on the GPU, for serving
// float16 / bfloat16 layers with the fp32 sparse kernel: the products are
// summed in fp32 and only the result is rounded back. Framework-free: the
// caller's stream in, a cudaError_t out.
#ifndef ESCORT_CC_KERNELS_CAST_GPU_H_
#define ESCORT_CC_KERNELS_CAST_GPU_H_

#include <cuda_runtime.h>

#include <cstdint>

namespace escort {

// IEEE binary16 (CUDA's __half, Eigen::half) or bfloat16 (__nv_bfloat16,
// Eigen::bfloat16): both are 16-bit values, so buffers pass as void*.
enum class HalfType { kFloat16, kBFloat16 };

// out[i] = float(in[i]) for i < n, on `stream`. `in` holds n 16-bit values
// of `type` and `out` n floats, both in device memory. Returns the launch
// status; nothing is launched for n == 0.
cudaError_t HalfToFloatGpu(HalfType type, const void* in, float* out,
                           int64_t n, cudaStream_t stream);

// out[i] = in[i] rounded to the nearest `type` value (ties to even), on
// `stream`; values beyond the type's range become +-Inf, NaN stays NaN.
cudaError_t FloatToHalfGpu(HalfType type, const float* in, void* out,
                           int64_t n, cudaStream_t stream);

}  // namespace escort

#endif  // ESCORT_CC_KERNELS_CAST_GPU_H_
