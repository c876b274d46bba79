// 16-bit float <-> fp32 conversions on the GPU (see cast_gpu.h).
#include "cc/kernels/cast_gpu.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

namespace escort {
namespace {

inline __device__ float ToFloat(__half v) { return __half2float(v); }
inline __device__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ T FromFloat(float v);
template <>
inline __device__ __half FromFloat<__half>(float v) { return __float2half_rn(v); }
template <>
inline __device__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Grid-stride loops: one launch of bounded size covers any n.
template <typename T>
__global__ void HalfToFloatKernel(const T* __restrict__ in,
                                  float* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = ToFloat(in[i]);
  }
}

template <typename T>
__global__ void FloatToHalfKernel(const float* __restrict__ in,
                                  T* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = FromFloat<T>(in[i]);
  }
}

constexpr int kThreads = 256;
// Enough blocks to fill a large GPU several times over; more only adds
// scheduling.
constexpr int64_t kMaxBlocks = 4096;

int Blocks(int64_t n) {
  return static_cast<int>(std::min(kMaxBlocks, (n + kThreads - 1) / kThreads));
}

}  // namespace

cudaError_t HalfToFloatGpu(HalfType type, const void* in, float* out,
                           int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (type == HalfType::kFloat16) {
    HalfToFloatKernel<<<Blocks(n), kThreads, 0, stream>>>(
        static_cast<const __half*>(in), out, n);
  } else {
    HalfToFloatKernel<<<Blocks(n), kThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(in), out, n);
  }
  return cudaGetLastError();
}

cudaError_t FloatToHalfGpu(HalfType type, const float* in, void* out,
                           int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (type == HalfType::kFloat16) {
    FloatToHalfKernel<<<Blocks(n), kThreads, 0, stream>>>(
        in, static_cast<__half*>(out), n);
  } else {
    FloatToHalfKernel<<<Blocks(n), kThreads, 0, stream>>>(
        in, static_cast<__nv_bfloat16*>(out), n);
  }
  return cudaGetLastError();
}

}  // namespace escort
