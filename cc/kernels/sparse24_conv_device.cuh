// What the two 2:4 tensor-core kernels (sparse24_conv_gpu.cu on mma.sp,
// sparse24_conv_wgmma.cu on wgmma.sp) share: their parameters and the device
// helpers for staging and for the epilogue. Internal to those two files.
#ifndef ESCORT_CC_KERNELS_SPARSE24_CONV_DEVICE_CUH_
#define ESCORT_CC_KERNELS_SPARSE24_CONV_DEVICE_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cc/kernels/csr_conv.h"
#include "cc/kernels/sparse24_conv.h"

namespace escort {
namespace sparse24 {

struct Params {
  const uint16_t* input;
  const uint4* packed;       // [step][tile][lane]
  const uint32_t* metadata;  // [step][tile][lane]
  const uint16_t* bias;      // K values or nullptr
  uint16_t* output;
  int H, W, C, K, P, Q, S;
  int stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left;
  int num_pixels, num_steps, num_tiles;
  int activation;  // 0 none, 1 relu, 2 relu6
  // Split-K (the wgmma kernel only): block (x, y) runs pipeline stages
  // y * stages_per_split onwards and, where partials is set, writes its fp32
  // sums to partials[y][pixel][K] for a second kernel to add up.
  float* partials;
  int stages_per_split;
};

inline Params MakeParams(const ConvGeometry& g, const void* input,
                         const void* packed_values, const uint32_t* metadata,
                         const void* bias, Activation activation,
                         void* output) {
  Params p;
  p.input = static_cast<const uint16_t*>(input);
  p.packed = static_cast<const uint4*>(packed_values);
  p.metadata = metadata;
  p.bias = static_cast<const uint16_t*>(bias);
  p.output = static_cast<uint16_t*>(output);
  p.H = static_cast<int>(g.H);
  p.W = static_cast<int>(g.W);
  p.C = static_cast<int>(g.C);
  p.K = static_cast<int>(g.K);
  p.P = static_cast<int>(g.P);
  p.Q = static_cast<int>(g.Q);
  p.S = static_cast<int>(g.S);
  p.stride_h = static_cast<int>(g.stride_h);
  p.stride_w = static_cast<int>(g.stride_w);
  p.dilation_h = static_cast<int>(g.dilation_h);
  p.dilation_w = static_cast<int>(g.dilation_w);
  p.pad_top = static_cast<int>(g.pad_top);
  p.pad_left = static_cast<int>(g.pad_left);
  p.num_pixels = static_cast<int>(g.N * g.P * g.Q);
  p.num_steps = static_cast<int>(g.R * g.S * g.C / kSparse24StepChannels);
  p.num_tiles = static_cast<int>((g.K + kSparse24TileRows - 1) / kSparse24TileRows);
  p.activation = activation == Activation::kRelu    ? 1
                 : activation == Activation::kRelu6 ? 2
                                                    : 0;
  p.partials = nullptr;
  p.stages_per_split = p.num_steps;
  return p;
}

// The grid of a kernel whose blocks (Cfg) cover Cfg::kBlockPixels output
// pixels and Cfg::kBlockTiles 16-channel tiles.
template <typename Cfg>
int64_t NumBlocks(const Params& p) {
  return static_cast<int64_t>((p.num_pixels + Cfg::kBlockPixels - 1) / Cfg::kBlockPixels) *
         ((p.num_tiles + Cfg::kBlockTiles - 1) / Cfg::kBlockTiles);
}

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
template <typename T>
__device__ __forceinline__ float ToFloat(uint16_t bits);
template <>
__device__ __forceinline__ float ToFloat<__half>(uint16_t bits) {
  return __half2float(__ushort_as_half(bits));
}
template <>
__device__ __forceinline__ float ToFloat<__nv_bfloat16>(uint16_t bits) {
  return __bfloat162float(__ushort_as_bfloat16(bits));
}
template <typename T>
__device__ __forceinline__ uint16_t FromFloat(float v);
template <>
__device__ __forceinline__ uint16_t FromFloat<__half>(float v) {
  return __half_as_ushort(__float2half_rn(v));
}
template <>
__device__ __forceinline__ uint16_t FromFloat<__nv_bfloat16>(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

// The next (r, s, c) of the filter that a kernel stages: stages go in order,
// `channels` input channels of one tap at a time.
struct TapCursor {
  int r = 0, s = 0, c = 0;
  __device__ __forceinline__ void Advance(int channels, const Params& p) {
    c += channels;
    if (c >= p.C) {  // a tap's last stage may run past C (zero filled)
      c = 0;
      if (++s == p.S) {
        s = 0;
        ++r;
      }
    }
  }
};

// Bias, then the activation (Params::activation), of one output value.
__device__ __forceinline__ float Activate(float v, int activation) {
  if (activation == 1) v = fmaxf(v, 0.f);
  if (activation == 2) v = fminf(fmaxf(v, 0.f), 6.f);
  return v;
}

__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src,
                                          bool valid) {
  // A source size of 0 fills the 16 bytes with zeros and reads nothing.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst),
               "l"(src), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::);
}

template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Stages the packed filter of `sub_steps` k32 steps from `first_step` on,
// for the block's `block_tiles` 16-row tiles from `first_tile`: A fragments
// at `a_dst` and metadata at `meta_dst` (shared addresses), both
// [sub step][tile][lane]. Tiles past K read the last tile (never stored), so
// every fragment the tensor cores see is well formed. Sub steps from
// `valid_steps` on (a stage that runs past C, whose B is zero filled) get
// zero A, so that a non-finite filter value cannot meet those zeros, and the
// metadata of the first step, which is well formed.
template <int kSubSteps, int kBlockTiles, int kThreads>
__device__ __forceinline__ void StageFilter(const Params& p, uint32_t a_dst, uint32_t meta_dst,
                                            int64_t first_step, int valid_steps,
                                            int first_tile) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int chunk = tid; chunk < kSubSteps * kBlockTiles * 32; chunk += kThreads) {
    const int sub = chunk / (kBlockTiles * 32);
    const int tile = min(first_tile + chunk / 32 % kBlockTiles, p.num_tiles - 1);
    const bool valid = sub < valid_steps;
    CpAsync16(a_dst + chunk * 16,
              p.packed + ((first_step + (valid ? sub : 0)) * p.num_tiles + tile) * 32 +
                  chunk % 32,
              valid);
  }
  // 16-byte chunks of 4 lanes' metadata.
  static_assert(kSubSteps * kBlockTiles * 8 <= kThreads, "one metadata chunk per thread");
  if (tid < kSubSteps * kBlockTiles * 8) {
    const int sub = tid / (kBlockTiles * 8);
    const int tile = min(first_tile + tid / 8 % kBlockTiles, p.num_tiles - 1);
    const int64_t step = first_step + (sub < valid_steps ? sub : 0);
    CpAsync16(meta_dst + tid * 16, p.metadata + (step * p.num_tiles + tile) * 32 + (tid % 8) * 4,
              true);
  }
}

// Writes a block's output tile, staged in shared memory as `tile`
// [pixel][channel] with a row pitch of `row_halves`, to the NHWC output as
// 16-byte rows of 8 channels.
template <int kBlockPixels, int kBlockRows, int kThreads>
__device__ __forceinline__ void StoreOutputTile(const Params& p,
                                                const uint16_t* tile,
                                                int row_halves, int first_pixel,
                                                int first_k) {
  constexpr int kRowChunks = kBlockRows / 8;
  const bool vector_rows = p.K % 8 == 0;
  for (int chunk = threadIdx.x; chunk < kBlockPixels * kRowChunks; chunk += kThreads) {
    const int px_local = chunk / kRowChunks, k_local = (chunk % kRowChunks) * 8;
    const int out_pixel = first_pixel + px_local;
    const int k = first_k + k_local;
    if (out_pixel >= p.num_pixels || k >= p.K) continue;
    const uint16_t* src = tile + px_local * row_halves + k_local;
    uint16_t* dst = p.output + static_cast<int64_t>(out_pixel) * p.K + k;
    if (vector_rows) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      for (int i = 0; i < 8 && k + i < p.K; ++i) dst[i] = src[i];
    }
  }
}
#endif  // sm_80 and newer

}  // namespace sparse24
}  // namespace escort

#endif  // ESCORT_CC_KERNELS_SPARSE24_CONV_DEVICE_CUH_
