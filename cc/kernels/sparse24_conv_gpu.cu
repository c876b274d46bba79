// 2:4 tensor-core convolution (see sparse24_conv_gpu.h and, for the packed
// filter, sparse24_conv.h).
//
// An implicit GEMM: out[k][pixel] = sum_j A[k][j] * B[j][pixel] with A the
// 2:4 filter and B the im2col of the NHWC input, never materialised. A block
// computes 64 output channels x 128 output pixels; its 4 warps (2 x 2) each
// 32 x 64, as 2 x 8 mma.sp m16n8k32 per step of 32 filter columns (one tap,
// 32 channels). Each step's operands are staged in shared memory with
// cp.async, 3 steps in flight: B as 128 pixel rows of 32 channels (zero
// filled where the window leaves the padded input), A and its metadata
// already in fragment order. The output tile goes through shared memory so
// that global stores are 16-byte rows of channels.
#include "cc/kernels/sparse24_conv_gpu.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "cc/kernels/sparse24_conv.h"

namespace escort {
namespace {

constexpr int kTileRows = static_cast<int>(kSparse24TileRows);          // 16
constexpr int kStepChannels = static_cast<int>(kSparse24StepChannels);  // 32
constexpr int kBlockTiles = 4;  // 64 output channels per block
constexpr int kBlockRows = kBlockTiles * kTileRows;
constexpr int kBlockPixels = 128;
constexpr int kThreads = 128;  // one B row (pixel) per thread per step
constexpr int kStages = 3;
// B rows padded by 16 bytes: the 8 rows an ldmatrix reads then start in
// distinct bank quads.
constexpr int kBRowHalves = kStepChannels + 8;
constexpr int kBStageBytes = kBlockPixels * kBRowHalves * 2;
constexpr int kAStageBytes = kBlockTiles * 32 * 16;
constexpr int kMetaStageBytes = kBlockTiles * 32 * 4;
constexpr int kStageBytes = kBStageBytes + kAStageBytes + kMetaStageBytes;
constexpr int kOutRowHalves = kBlockRows + 8;
constexpr int kOutBytes = kBlockPixels * kOutRowHalves * 2;
constexpr int kSmemBytes = std::max(kStages * kStageBytes, kOutBytes);
static_assert(kBlockPixels == kThreads, "one B row per thread");
static_assert(kBlockTiles * 32 == kThreads, "one A chunk per thread");

struct Params {
  const uint16_t* input;
  const uint4* packed;       // [step][tile][lane]
  const uint32_t* metadata;  // [step][tile][lane]
  const uint16_t* bias;      // K values or nullptr
  uint16_t* output;
  int H, W, C, K, P, Q, S;
  int stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left;
  int num_pixels, num_steps, num_tiles, steps_per_tap;
  int activation;  // 0 none, 1 relu, 2 relu6
};

// Device helpers of the kernel, whose body exists for sm_80 and newer only.
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

template <typename T>
__device__ __forceinline__ void MmaSparse(float (&d)[4], const uint4& a,
                                          const uint32_t (&b)[4],
                                          uint32_t metadata) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16."
        "f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, "
        "{%0, %1, %2, %3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]),
          "r"(b[2]), "r"(b[3]), "r"(metadata));
  } else {
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16."
        "bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, "
        "{%0, %1, %2, %3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]),
          "r"(b[2]), "r"(b[3]), "r"(metadata));
  }
}
#endif  // sm_80 and newer

template <typename T>
__global__ void __launch_bounds__(kThreads)
    Sparse24ConvKernel(const Params p) {
#if __CUDA_ARCH__ >= 800
  extern __shared__ __align__(16) unsigned char smem[];
  const uint32_t smem_base =
      static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warp_m = warp % 2, warp_n = warp / 2;
  const int first_tile = blockIdx.y * kBlockTiles;

  // This thread's B row: one output pixel, read at every step.
  const int pixel = blockIdx.x * kBlockPixels + tid;
  const bool pixel_valid = pixel < p.num_pixels;
  const int image_pixels = p.P * p.Q;
  const int n = pixel_valid ? pixel / image_pixels : 0;
  const int rest = pixel_valid ? pixel % image_pixels : 0;
  const int ih0 = (rest / p.Q) * p.stride_h - p.pad_top;
  const int iw0 = (rest % p.Q) * p.stride_w - p.pad_left;
  const uint16_t* image = p.input + static_cast<int64_t>(n) * p.H * p.W * p.C;
  // This thread's A chunk; tiles past K read the last tile (never stored),
  // so every fragment the tensor cores see has well-formed metadata.
  const int a_tile = min(first_tile + tid / 32, p.num_tiles - 1);
  const int meta_tile = min(first_tile + tid / 8, p.num_tiles - 1);

  auto load_step = [&](int step, int stage) {
    const uint32_t b_dst = smem_base + stage * kStageBytes + tid * kBRowHalves * 2;
    const int tap = step / p.steps_per_tap;
    const int c0 = (step % p.steps_per_tap) * kStepChannels;
    const int ih = ih0 + (tap / p.S) * p.dilation_h;
    const int iw = iw0 + (tap % p.S) * p.dilation_w;
    const bool valid = pixel_valid && ih >= 0 && ih < p.H && iw >= 0 && iw < p.W;
    const uint16_t* src =
        valid ? image + (static_cast<int64_t>(ih) * p.W + iw) * p.C + c0 : p.input;
#pragma unroll
    for (int q = 0; q < 4; ++q) CpAsync16(b_dst + q * 16, src + (valid ? q * 8 : 0), valid);

    const uint32_t a_dst = smem_base + stage * kStageBytes + kBStageBytes + tid * 16;
    CpAsync16(a_dst,
              p.packed + (static_cast<int64_t>(step) * p.num_tiles + a_tile) * 32 + lane,
              true);
    if (tid < 32) {
      const uint32_t m_dst = smem_base + stage * kStageBytes + kBStageBytes +
                             kAStageBytes + tid * 16;
      CpAsync16(m_dst,
                p.metadata +
                    (static_cast<int64_t>(step) * p.num_tiles + meta_tile) * 32 +
                    (tid % 8) * 4,
                true);
    }
  };

  float acc[2][8][4] = {};
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < p.num_steps) load_step(s, s);
    CpAsyncCommit();
  }
  for (int step = 0; step < p.num_steps; ++step) {
    CpAsyncWait<kStages - 2>();
    __syncthreads();
    const int stage = step % kStages;
    const unsigned char* stage_ptr = smem + stage * kStageBytes;
    const uint4* a_frags = reinterpret_cast<const uint4*>(stage_ptr + kBStageBytes);
    const uint32_t* metas =
        reinterpret_cast<const uint32_t*>(stage_ptr + kBStageBytes + kAStageBytes);
    uint4 a[2];
    uint32_t e[2];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      a[mi] = a_frags[(warp_m * 2 + mi) * 32 + lane];
      e[mi] = metas[(warp_m * 2 + mi) * 32 + lane];
    }
    // ldmatrix.x4: lanes 8i..8i+7 address the rows of matrix i, channels
    // 8i..8i+7 of 8 pixels; matrix i becomes B register i.
    const uint32_t b_base = smem_base + stage * kStageBytes +
                            ((warp_n * 64 + (lane & 7)) * kBRowHalves + (lane >> 3) * 8) * 2;
#pragma unroll
    for (int ni = 0; ni < 8; ++ni) {
      uint32_t b[4];
      asm volatile(
          "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
          : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
          : "r"(b_base + ni * 8 * kBRowHalves * 2));
      MmaSparse<T>(acc[0][ni], a[0], b, e[0]);
      MmaSparse<T>(acc[1][ni], a[1], b, e[1]);
    }
    const int next = step + kStages - 1;
    if (next < p.num_steps) load_step(next, next % kStages);
    CpAsyncCommit();
  }
  CpAsyncWait<0>();
  __syncthreads();

  // Accumulator (mi, ni, h * 2 + c): channel 16 (2 warp_m + mi) + g + 8h,
  // pixel 64 warp_n + 8 ni + 2t + c of the block's tile.
  uint16_t* out_tile = reinterpret_cast<uint16_t*>(smem);
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int k_local = (warp_m * 2 + mi) * kTileRows + g + 8 * h;
      const int k = first_tile * kTileRows + k_local;
      const float bias = (p.bias != nullptr && k < p.K) ? ToFloat<T>(p.bias[k]) : 0.f;
#pragma unroll
      for (int ni = 0; ni < 8; ++ni) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          float v = acc[mi][ni][h * 2 + c] + bias;
          if (p.activation == 1) v = fmaxf(v, 0.f);
          if (p.activation == 2) v = fminf(fmaxf(v, 0.f), 6.f);
          const int px_local = warp_n * 64 + ni * 8 + 2 * t + c;
          out_tile[px_local * kOutRowHalves + k_local] = FromFloat<T>(v);
        }
      }
    }
  }
  __syncthreads();
  // 16-byte chunks of 8 channels: 8 per pixel row, 128 rows.
  const int first_k = first_tile * kTileRows;
  const bool vector_rows = p.K % 8 == 0;
  for (int chunk = tid; chunk < kBlockPixels * 8; chunk += kThreads) {
    const int px_local = chunk / 8, k_local = (chunk % 8) * 8;
    const int out_pixel = blockIdx.x * kBlockPixels + px_local;
    const int k = first_k + k_local;
    if (out_pixel >= p.num_pixels || k >= p.K) continue;
    const uint16_t* src = out_tile + px_local * kOutRowHalves + k_local;
    uint16_t* dst = p.output + static_cast<int64_t>(out_pixel) * p.K + k;
    if (vector_rows) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      for (int i = 0; i < 8 && k + i < p.K; ++i) dst[i] = src[i];
    }
  }
#endif
}

__global__ void PackValuesKernel(const int32_t* __restrict__ value_index,
                                 int64_t n, const uint16_t* __restrict__ values,
                                 uint16_t* __restrict__ packed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int32_t source = value_index[i];
    packed[i] = source < 0 ? uint16_t{0} : values[source];
  }
}

template <typename T>
cudaError_t Launch(const ConvGeometry& g, const void* input,
                   const void* packed_values, const uint32_t* metadata,
                   const void* bias, Activation activation, void* output,
                   cudaStream_t stream) {
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
  p.steps_per_tap = static_cast<int>(g.C / kStepChannels);
  p.num_steps = static_cast<int>(g.R * g.S) * p.steps_per_tap;
  p.num_tiles = static_cast<int>((g.K + kTileRows - 1) / kTileRows);
  p.activation = activation == Activation::kRelu    ? 1
                 : activation == Activation::kRelu6 ? 2
                                                    : 0;
  const dim3 grid((p.num_pixels + kBlockPixels - 1) / kBlockPixels,
                  (p.num_tiles + kBlockTiles - 1) / kBlockTiles);
  Sparse24ConvKernel<T><<<grid, kThreads, kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

bool Sparse24Supported() {
  // Per device: 0 not yet known, 1 supported, 2 not.
  constexpr int kMaxDevices = 64;
  static std::atomic<int> known[kMaxDevices];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (device < kMaxDevices && known[device].load() != 0) {
    return known[device].load() == 1;
  }
  int major = 0;
  // The kernel's body exists only in code built for sm_80 and newer; on an
  // older device the launch would run an empty kernel.
  cudaFuncAttributes attributes;
  const bool supported =
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                             device) == cudaSuccess &&
      major >= 8 &&
      cudaFuncGetAttributes(&attributes, Sparse24ConvKernel<__half>) ==
          cudaSuccess &&
      attributes.binaryVersion >= 80;
  if (device < kMaxDevices) known[device].store(supported ? 1 : 2);
  return supported;
}

cudaError_t PackSparse24ValuesGpu(const int32_t* value_index,
                                  int64_t num_packed, const void* values,
                                  void* packed, cudaStream_t stream) {
  if (num_packed <= 0) return cudaSuccess;
  constexpr int kPackThreads = 256;
  const int blocks = static_cast<int>(
      std::min<int64_t>(4096, (num_packed + kPackThreads - 1) / kPackThreads));
  PackValuesKernel<<<blocks, kPackThreads, 0, stream>>>(
      value_index, num_packed, static_cast<const uint16_t*>(values),
      static_cast<uint16_t*>(packed));
  return cudaGetLastError();
}

cudaError_t Sparse24Conv2DGpu(HalfType type, const ConvGeometry& geometry,
                              const void* input, const void* packed_values,
                              const uint32_t* metadata, const void* bias,
                              Activation activation, void* output,
                              cudaStream_t stream) {
  if (geometry.data_format != DataFormat::kNHWC ||
      geometry.C % kStepChannels != 0 || !Sparse24Supported()) {
    return cudaErrorNotSupported;
  }
  if (geometry.OutputSize() == 0) return cudaSuccess;
  return type == HalfType::kFloat16
             ? Launch<__half>(geometry, input, packed_values, metadata, bias,
                              activation, output, stream)
             : Launch<__nv_bfloat16>(geometry, input, packed_values, metadata,
                                     bias, activation, output, stream);
}

}  // namespace escort
