// 2:4 tensor-core convolution (see sparse24_conv_gpu.h and, for the packed
// filter, sparse24_conv.h): the mma.sp kernel, for compute capability 8.0 and
// newer, and the dispatch to the Hopper one (sparse24_conv_wgmma.cu).
//
// An implicit GEMM: out[k][pixel] = sum_j A[k][j] * B[j][pixel] with A the
// 2:4 filter and B the im2col of the NHWC input, never materialised. A block
// computes kBlockRows output channels x kBlockPixels output pixels
// (Config); each warp 16 kWarpTiles x 64 of them, as kWarpTiles x 8 mma.sp
// m16n8k32 per step of 32 filter columns (one tap, 32 channels). Each
// stage's operands are staged in shared memory with cp.async, kStages - 1
// stages in flight: B as pixel rows of kStageChannels channels (zero filled
// where the window leaves the padded input), A and its metadata already in
// fragment order. The output tile goes through shared memory so that global
// stores are 16-byte rows of channels.
#include "cc/kernels/sparse24_conv_gpu.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <type_traits>

#include "cc/kernels/sparse24_conv.h"
#include "cc/kernels/sparse24_conv_device.cuh"
#include "cc/kernels/sparse24_conv_wgmma.h"

namespace escort {
namespace {

constexpr int kTileRows = static_cast<int>(kSparse24TileRows);          // 16
constexpr int kStepChannels = static_cast<int>(kSparse24StepChannels);  // 32
// B rows padded by 16 bytes: the 8 rows an ldmatrix reads then start in
// distinct bank quads.
constexpr int kBPadHalves = 8;

// A block of kWarpsM x kWarpsN warps, each computing kWarpTiles 16-channel
// tiles x 64 pixels (8 mma.sp columns of 8 pixels), staging kSubSteps steps
// of 32 channels at a time (2 when C allows: half the barriers) in a
// kStages-deep cp.async pipeline. One thread per pixel row of the block,
// which it stages at every step.
template <int kWarpsM_, int kWarpsN_, int kWarpTiles_, int kSubSteps_, int kStages_>
struct Config {
  static constexpr int kWarpsM = kWarpsM_, kWarpsN = kWarpsN_;
  static constexpr int kWarpTiles = kWarpTiles_, kSubSteps = kSubSteps_;
  static constexpr int kStages = kStages_;
  static constexpr int kWarpPixels = 64;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kBlockTiles = kWarpsM * kWarpTiles;
  static constexpr int kBlockRows = kBlockTiles * kTileRows;
  static constexpr int kBlockPixels = kWarpsN * kWarpPixels;
  static constexpr int kStageChannels = kSubSteps * kStepChannels;
  static constexpr int kBRowHalves = kStageChannels + kBPadHalves;
  static constexpr int kBStageBytes = kBlockPixels * kBRowHalves * 2;
  static constexpr int kAStageBytes = kSubSteps * kBlockTiles * 32 * 16;
  static constexpr int kMetaStageBytes = kSubSteps * kBlockTiles * 32 * 4;
  static constexpr int kStageBytes = kBStageBytes + kAStageBytes + kMetaStageBytes;
  static constexpr int kOutRowHalves = kBlockRows + 8;
  static constexpr int kOutBytes = kBlockPixels * kOutRowHalves * 2;
  static constexpr int kSmemBytes = std::max(kStages * kStageBytes, kOutBytes);
  static_assert(kBlockPixels == kThreads, "one B row per thread");
};
// 128 channels x 256 pixels for large problems, smaller blocks for grids
// that would not fill the GPU, 64 channels where K is that small.
template <int kSubSteps>
using LargeConfig = Config<2, 4, 4, kSubSteps, 3>;
template <int kSubSteps>
using MediumConfig = Config<2, 2, 4, kSubSteps, 4>;
template <int kSubSteps>
using SmallConfig = Config<2, 2, 2, kSubSteps, 4>;

using sparse24::Params;

// The mma.sp helper exists for sm_80 and newer only.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
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

template <typename T, typename Cfg>
__global__ void __launch_bounds__(Cfg::kThreads)
    Sparse24ConvKernel(const Params p) {
#if __CUDA_ARCH__ >= 800
  extern __shared__ __align__(16) unsigned char smem[];
  const uint32_t smem_base =
      static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warp_m = warp % Cfg::kWarpsM, warp_n = warp / Cfg::kWarpsM;
  // Blocks that share pixels run side by side, so that their common input
  // is read from DRAM once and then from L2.
  const int channel_blocks = (p.num_tiles + Cfg::kBlockTiles - 1) / Cfg::kBlockTiles;
  const int first_tile = static_cast<int>(blockIdx.x % channel_blocks) * Cfg::kBlockTiles;
  const int first_pixel = static_cast<int>(blockIdx.x / channel_blocks) * Cfg::kBlockPixels;

  // This thread's B row: one output pixel, read at every step.
  const int pixel = first_pixel + tid;
  const bool pixel_valid = pixel < p.num_pixels;
  const int image_pixels = p.P * p.Q;
  const int n = pixel_valid ? pixel / image_pixels : 0;
  const int rest = pixel_valid ? pixel % image_pixels : 0;
  const int ih0 = (rest / p.Q) * p.stride_h - p.pad_top;
  const int iw0 = (rest % p.Q) * p.stride_w - p.pad_left;
  const uint16_t* image = p.input + static_cast<int64_t>(n) * p.H * p.W * p.C;
  // The next step to stage, as (r, s, c0): steps are staged in order.
  sparse24::TapCursor tap;

  // Stage `stage` gets filter steps kSubSteps * index onwards.
  auto load_stage = [&](int index, int stage) {
    const uint32_t stage_base = smem_base + stage * Cfg::kStageBytes;
    const int ih = ih0 + tap.r * p.dilation_h;
    const int iw = iw0 + tap.s * p.dilation_w;
    const bool valid = pixel_valid && ih >= 0 && ih < p.H && iw >= 0 && iw < p.W;
    const uint16_t* src =
        valid ? image + (static_cast<int64_t>(ih) * p.W + iw) * p.C + tap.c : p.input;
    const uint32_t b_dst = stage_base + tid * Cfg::kBRowHalves * 2;
#pragma unroll
    for (int q = 0; q < Cfg::kStageChannels / 8; ++q) {
      sparse24::CpAsync16(b_dst + q * 16, src + (valid ? q * 8 : 0), valid);
    }
    tap.Advance(Cfg::kStageChannels, p);

    sparse24::StageFilter<Cfg::kSubSteps, Cfg::kBlockTiles, Cfg::kThreads>(
        p, stage_base + Cfg::kBStageBytes, stage_base + Cfg::kBStageBytes + Cfg::kAStageBytes,
        static_cast<int64_t>(index) * Cfg::kSubSteps, Cfg::kSubSteps, first_tile);
  };

  constexpr int kStages = Cfg::kStages;
  const int num_stage_loads = p.num_steps / Cfg::kSubSteps;
  float acc[Cfg::kWarpTiles][8][4] = {};
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_stage_loads) load_stage(s, s);
    sparse24::CpAsyncCommit();
  }
  for (int index = 0; index < num_stage_loads; ++index) {
    sparse24::CpAsyncWait<kStages - 2>();
    __syncthreads();
    // Refill the stage every warp finished with before the barrier, so that
    // the copies overlap this stage's math.
    const int next = index + kStages - 1;
    if (next < num_stage_loads) load_stage(next, next % kStages);
    sparse24::CpAsyncCommit();

    const int stage = index % kStages;
    const unsigned char* stage_ptr = smem + stage * Cfg::kStageBytes;
    const uint4* a_frags = reinterpret_cast<const uint4*>(stage_ptr + Cfg::kBStageBytes);
    const uint32_t* metas = reinterpret_cast<const uint32_t*>(
        stage_ptr + Cfg::kBStageBytes + Cfg::kAStageBytes);
#pragma unroll
    for (int sub = 0; sub < Cfg::kSubSteps; ++sub) {
      // All of the sub step's fragments first, then its mma.sp: the asm
      // statements keep their order, so a load placed between two mma.sp
      // would stall the second on the load's latency.
      uint4 a[Cfg::kWarpTiles];
      uint32_t e[Cfg::kWarpTiles];
#pragma unroll
      for (int mi = 0; mi < Cfg::kWarpTiles; ++mi) {
        const int fragment = (sub * Cfg::kBlockTiles + warp_m * Cfg::kWarpTiles + mi) * 32;
        a[mi] = a_frags[fragment + lane];
        e[mi] = metas[fragment + lane];
      }
      // ldmatrix.x4: lanes 8i..8i+7 address the rows of matrix i, channels
      // 8i..8i+7 of the sub step for 8 pixels; matrix i becomes B register i.
      const uint32_t b_base = smem_base + stage * Cfg::kStageBytes +
                              ((warp_n * Cfg::kWarpPixels + (lane & 7)) * Cfg::kBRowHalves +
                               sub * kStepChannels + (lane >> 3) * 8) *
                                  2;
      uint32_t b[8][4];
#pragma unroll
      for (int ni = 0; ni < 8; ++ni) {
        asm volatile(
            "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
            : "=r"(b[ni][0]), "=r"(b[ni][1]), "=r"(b[ni][2]), "=r"(b[ni][3])
            : "r"(b_base + ni * 8 * Cfg::kBRowHalves * 2));
      }
#pragma unroll
      for (int ni = 0; ni < 8; ++ni) {
#pragma unroll
        for (int mi = 0; mi < Cfg::kWarpTiles; ++mi) {
          MmaSparse<T>(acc[mi][ni], a[mi], b[ni], e[mi]);
        }
      }
    }
  }
  sparse24::CpAsyncWait<0>();
  __syncthreads();

  // Accumulator (mi, ni, h * 2 + c): channel 16 (kWarpTiles warp_m + mi) +
  // g + 8h, pixel 64 warp_n + 8 ni + 2t + c of the block's tile.
  uint16_t* out_tile = reinterpret_cast<uint16_t*>(smem);
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mi = 0; mi < Cfg::kWarpTiles; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int k_local = (warp_m * Cfg::kWarpTiles + mi) * kTileRows + g + 8 * h;
      const int k = first_tile * kTileRows + k_local;
      const float bias = (p.bias != nullptr && k < p.K) ? sparse24::ToFloat<T>(p.bias[k]) : 0.f;
#pragma unroll
      for (int ni = 0; ni < 8; ++ni) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float v = sparse24::Activate(acc[mi][ni][h * 2 + c] + bias, p.activation);
          const int px_local = warp_n * Cfg::kWarpPixels + ni * 8 + 2 * t + c;
          out_tile[px_local * Cfg::kOutRowHalves + k_local] = sparse24::FromFloat<T>(v);
        }
      }
    }
  }
  __syncthreads();
  sparse24::StoreOutputTile<Cfg::kBlockPixels, Cfg::kBlockRows, Cfg::kThreads>(
      p, out_tile, Cfg::kOutRowHalves, first_pixel, first_tile * kTileRows);
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

// What the launcher needs of a device, looked up once per device.
struct DeviceState {
  bool supported = false;
  bool wgmma = false;  // the Hopper kernel (sparse24_conv_wgmma.h) runs here
  int num_sms = 0;
};

template <typename T, typename Cfg>
cudaError_t AllowSharedMemory() {
  return cudaFuncSetAttribute(Sparse24ConvKernel<T, Cfg>,
                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                              Cfg::kSmemBytes);
}

template <typename T>
cudaError_t AllowSharedMemoryAll() {
  for (cudaError_t e :
       {AllowSharedMemory<T, LargeConfig<1>>(), AllowSharedMemory<T, MediumConfig<1>>(),
        AllowSharedMemory<T, SmallConfig<1>>(), AllowSharedMemory<T, LargeConfig<2>>(),
        AllowSharedMemory<T, MediumConfig<2>>(), AllowSharedMemory<T, SmallConfig<2>>()}) {
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

// The device's state, set up on first use: the shared-memory attribute of
// every kernel instance is per device.
cudaError_t GetDeviceState(DeviceState* state) {
  constexpr int kMaxDevices = 64;
  static std::mutex mu;
  static DeviceState states[kMaxDevices];
  static bool known[kMaxDevices] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device >= kMaxDevices) return cudaErrorInvalidDevice;
  std::lock_guard<std::mutex> lock(mu);
  if (!known[device]) {
    DeviceState fresh;
    int major = 0;
    err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (err == cudaSuccess) {
      err = cudaDeviceGetAttribute(&fresh.num_sms, cudaDevAttrMultiProcessorCount, device);
    }
    // The kernels' bodies exist only in code built for sm_80 and newer; on an
    // older device a launch would run an empty kernel.
    cudaFuncAttributes attributes;
    if (err == cudaSuccess) {
      err = cudaFuncGetAttributes(&attributes, Sparse24ConvKernel<__half, SmallConfig<1>>);
    }
    if (err != cudaSuccess) return err;
    fresh.supported = major >= 8 && attributes.binaryVersion >= 80;
    if (fresh.supported) err = AllowSharedMemoryAll<__half>();
    if (fresh.supported && err == cudaSuccess) err = AllowSharedMemoryAll<__nv_bfloat16>();
    if (fresh.supported && err == cudaSuccess) err = PrepareSparse24Wgmma(&fresh.wgmma);
    if (err != cudaSuccess) return err;
    states[device] = fresh;
    known[device] = true;
  }
  *state = states[device];
  return cudaSuccess;
}

template <typename T, typename Cfg>
cudaError_t LaunchConfig(const Params& p, cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>(sparse24::NumBlocks<Cfg>(p));
  Sparse24ConvKernel<T, Cfg><<<blocks, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

// The largest block that still gives every multiprocessor one.
template <typename T, int kSubSteps>
cudaError_t LaunchBlock(const Params& p, int num_sms, cudaStream_t stream) {
  if (p.K > SmallConfig<kSubSteps>::kBlockRows) {
    if (sparse24::NumBlocks<LargeConfig<kSubSteps>>(p) >= num_sms) {
      return LaunchConfig<T, LargeConfig<kSubSteps>>(p, stream);
    }
    if (sparse24::NumBlocks<MediumConfig<kSubSteps>>(p) >= num_sms) {
      return LaunchConfig<T, MediumConfig<kSubSteps>>(p, stream);
    }
  }
  return LaunchConfig<T, SmallConfig<kSubSteps>>(p, stream);
}

template <typename T>
cudaError_t Launch(const ConvGeometry& g, const void* input,
                   const void* packed_values, const uint32_t* metadata,
                   const void* bias, Activation activation, void* output,
                   int num_sms, cudaStream_t stream) {
  const Params p = sparse24::MakeParams(g, input, packed_values, metadata, bias, activation,
                                        output);
  return g.C % (2 * kStepChannels) == 0 ? LaunchBlock<T, 2>(p, num_sms, stream)
                                         : LaunchBlock<T, 1>(p, num_sms, stream);
}

}  // namespace

bool Sparse24Supported() {
  DeviceState state;
  return GetDeviceState(&state) == cudaSuccess && state.supported;
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

namespace {
bool RunsOnWgmma(const DeviceState& state, const ConvGeometry& geometry) {
  return state.wgmma && geometry.data_format == DataFormat::kNHWC &&
         geometry.C % kSparse24StepChannels == 0 && geometry.OutputSize() > 0;
}
}  // namespace

cudaError_t Sparse24WorkspaceBytes(const ConvGeometry& geometry, size_t* bytes) {
  *bytes = 0;
  DeviceState state;
  const cudaError_t err = GetDeviceState(&state);
  if (err == cudaSuccess && RunsOnWgmma(state, geometry)) {
    *bytes = Sparse24WgmmaWorkspaceBytes(geometry, state.num_sms);
  }
  return err;
}

cudaError_t Sparse24Conv2DGpu(HalfType type, const ConvGeometry& geometry,
                              const void* input, const void* packed_values,
                              const uint32_t* metadata, const void* bias,
                              Activation activation, void* output,
                              cudaStream_t stream, void* workspace,
                              size_t workspace_bytes) {
  DeviceState state;
  const cudaError_t err = GetDeviceState(&state);
  if (err != cudaSuccess) return err;
  if (geometry.data_format != DataFormat::kNHWC ||
      geometry.C % kStepChannels != 0 || !state.supported) {
    return cudaErrorNotSupported;
  }
  if (geometry.OutputSize() == 0) return cudaSuccess;
  if (RunsOnWgmma(state, geometry)) {
    return Sparse24Conv2DWgmma(type, geometry, input, packed_values, metadata, bias, activation,
                               output, state.num_sms, workspace, workspace_bytes, stream);
  }
  return type == HalfType::kFloat16
             ? Launch<__half>(geometry, input, packed_values, metadata, bias,
                              activation, output, state.num_sms, stream)
             : Launch<__nv_bfloat16>(geometry, input, packed_values, metadata,
                                     bias, activation, output, state.num_sms,
                                     stream);
}

}  // namespace escort
