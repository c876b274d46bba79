// The Hopper path of the 2:4 tensor-core convolution (see
// sparse24_conv_wgmma.h): the implicit GEMM of sparse24_conv_gpu.cu on the
// warpgroup sparse MMA, wgmma.mma_async.sp.m64n128k32, which issues one
// 64 x 128 x 32 product per warpgroup and keeps the tensor cores busy from
// shared memory instead of per-warp register fragments.
//
// A block has kWgM x kWgN warpgroups; warpgroup (wm, wn) computes output
// channels 64 wm .. 64 wm + 63 of the block for its 128 pixels 128 wn ...
// A pipeline stage holds one filter tap and 64 input channels (two k32
// steps): B, the block's pixels x 64 channels of the NHWC input, stored
// K-major with the 128-byte swizzle the wgmma descriptor names; A and its
// metadata in the fragment order of sparse24_conv.h, which is, per warp, the
// register layout wgmma.sp takes for A (warp w of a warpgroup holds rows
// 16 w .. 16 w + 15). Two kernels fill the stages: Sparse24TmaKernel with
// the copy engine (one im2col TMA load for B, bulk copies for A), wherever
// the input's tensor map can be encoded, and Sparse24WgmmaKernel with
// cp.async (B gathered by 8 threads per 128-byte pixel row, so every request
// reads whole sectors) everywhere else.
#include "cc/kernels/sparse24_conv_wgmma.h"

#include <cuda.h>  // CUtensorMap and its encoder's signature: types only
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cc/kernels/sparse24_conv.h"
#include "cc/kernels/sparse24_conv_device.cuh"

// The kernel's body exists only in code for sm_90a (the build compiles this
// file for that target alone when it targets Hopper, and defines
// ESCORT_SPARSE24_WGMMA).
#if defined(ESCORT_SPARSE24_WGMMA) && defined(__CUDA_ARCH__) && \
    defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ESCORT_WGMMA_BODY 1
#endif

namespace escort {
namespace {

using sparse24::Params;

constexpr int kStageChannels = static_cast<int>(kSparse24WgmmaStageChannels);
constexpr int kRowBytes = kStageChannels * 2;  // one pixel's 64 channels
constexpr int kSwizzleBytes = 1024;            // 8 rows of the 128-byte swizzle

// kSplitK blocks (those for grids smaller than the GPU) may run part of the
// stages.
template <int kWgM_, int kWgN_, int kStages_, bool kSplitK_>
struct Config {
  static constexpr int kWgM = kWgM_, kWgN = kWgN_, kStages = kStages_;
  static constexpr bool kSplitK = kSplitK_;
  static constexpr int kWgPixels = 128;  // N of the wgmma
  static constexpr int kThreads = 128 * kWgM * kWgN;
  static constexpr int kBlockTiles = 4 * kWgM;  // 16-row A tiles
  static constexpr int kBlockRows = 64 * kWgM;
  static constexpr int kBlockPixels = kWgPixels * kWgN;
  static constexpr int kSubSteps = kStageChannels / static_cast<int>(kSparse24StepChannels);
  static constexpr int kBStageBytes = kBlockPixels * kRowBytes;
  static constexpr int kAStageBytes = kSubSteps * kBlockTiles * 32 * 16;
  static constexpr int kMetaStageBytes = kSubSteps * kBlockTiles * 32 * 4;
  static constexpr int kStageBytes = kBStageBytes + kAStageBytes + kMetaStageBytes;
  static constexpr int kRowsPerThread = kBlockPixels * 8 / kThreads;
  static constexpr int kOutRowHalves = kBlockRows + 8;
  static constexpr int kOutBytes = kBlockPixels * kOutRowHalves * 2;
  static constexpr int kPipeBytes = std::max(kStages * kStageBytes, kOutBytes);
  // Then each B row's source (int4), and room to align the stages.
  static constexpr int kSmemBytes = kPipeBytes + kBlockPixels * 16 + kSwizzleBytes;
  static_assert(kStageBytes % kSwizzleBytes == 0, "every stage's B starts on a swizzle atom");
  static_assert(kThreads % 8 == 0 && kBlockPixels * 8 % kThreads == 0, "whole rows");
  static_assert(kSmemBytes <= 227 * 1024, "fits an SM90 block");
};
// 128 channels x 256 pixels; 256 x 128 where K is a multiple of 256 (36 KB
// a stage instead of 42 for the same FLOPs: on an H100, VGG-16 conv3_2 at
// batch 32 took 231 us instead of 252); for 64 or fewer output channels
// 64 x 256; for grids that would leave multiprocessors idle, 128 x 128 and
// 64 x 128.
using WideConfig = Config<2, 2, 5, false>;
using TallConfig = Config<4, 1, 5, false>;
using NarrowConfig = Config<1, 2, 5, false>;
using SmallWideConfig = Config<2, 1, 5, true>;
using SmallNarrowConfig = Config<1, 1, 5, true>;

// Pipeline stages per filter tap (the last one half empty where C % 64 ==
// 32), and in all.
__host__ __device__ inline int StagesPerTap(const Params& p) {
  return (p.C + kStageChannels - 1) / kStageChannels;
}
__host__ __device__ inline int NumStages(const Params& p) {
  const int taps = p.num_steps / (p.C / static_cast<int>(kSparse24StepChannels));
  return taps * StagesPerTap(p);
}

#ifdef ESCORT_WGMMA_BODY
// The shared-memory matrix descriptor of a K-major B operand with the
// 128-byte swizzle: 8-row groups 1024 bytes apart (stride byte offset); the
// leading byte offset is unused by swizzled K-major layouts.
__device__ __forceinline__ uint64_t BDescriptor(uint32_t smem_address) {
  return static_cast<uint64_t>((smem_address & 0x3FFFF) >> 4) |
         (uint64_t{1} << 16) | (uint64_t{kSwizzleBytes >> 4} << 32) |
         (uint64_t{1} << 62);
}

// d += A (64 x 32, 2:4, from registers: `a` and metadata `e`, selector 0:
// lanes with lane % 4 < 2 hold it) x B (32 x N, from the descriptor), for
// this warpgroup: operands d, a, b-desc, sp-meta, sp-sel, scale-d,
// imm-scale-a, imm-scale-b, imm-trans-b (0: K-major), as CUTLASS's
// SM90 sparse GMMA ..._RS atoms issue it.
#define ESCORT_WGMMA_SP_M64N128K32(TYPE) \
  asm volatile( \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %70, 0;\n" \
      "wgmma.mma_async.sp.sync.aligned.m64n128k32.f32." TYPE "." TYPE " " \
  "{%0, %1, %2, %3, %4, %5, %6, %7," \
  "%8, %9, %10, %11, %12, %13, %14, %15," \
  "%16, %17, %18, %19, %20, %21, %22, %23," \
  "%24, %25, %26, %27, %28, %29, %30, %31," \
  "%32, %33, %34, %35, %36, %37, %38, %39," \
  "%40, %41, %42, %43, %44, %45, %46, %47," \
  "%48, %49, %50, %51, %52, %53, %54, %55," \
  "%56, %57, %58, %59, %60, %61, %62, %63}, " \
      "{%64, %65, %66, %67}, %68, %69, 0, p, 1, 1, 0;\n}\n" \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), \
      "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), \
      "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), \
      "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
      "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
      "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), \
      "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
      "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), \
      "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
      "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), \
      "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
      "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), \
      "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "l"(b_desc), "r"(e), "n"(1))
template <typename T>
__device__ __forceinline__ void WgmmaSparse(float (&d)[64], const uint4& a, uint64_t b_desc,
                                            uint32_t e) {
  if constexpr (std::is_same_v<T, __half>) {
    ESCORT_WGMMA_SP_M64N128K32("f16");
  } else {
    ESCORT_WGMMA_SP_M64N128K32("bf16");
  }
}
#undef ESCORT_WGMMA_SP_M64N128K32

__device__ __forceinline__ void WgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most kPending of this warpgroup's committed wgmma groups
// are still in flight.
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Keeps the compiler from moving accesses of the accumulators across a
// wgmma fence, commit or wait (CUTLASS's warpgroup_fence_operand).
template <int N>
__device__ __forceinline__ void FenceOperands(float (&acc)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(acc[i])::"memory");
}

// Where a block's stages start (on a 1024-byte boundary of the shared
// address space, where the swizzle pattern repeats), and where this thread
// and block sit in the product. Blocks that share pixels are adjacent, so
// that their common input is read from DRAM once and then from L2.
template <typename Cfg>
struct BlockPlace {
  uint32_t base;
  unsigned char* smem;
  int tid, lane, warp_in_group, wm, wn, first_tile, first_pixel;

  __device__ __forceinline__ BlockPlace(unsigned char* smem_raw, const Params& p) {
    const uint32_t raw_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
    base = (raw_base + kSwizzleBytes - 1) & ~uint32_t{kSwizzleBytes - 1};
    smem = smem_raw + (base - raw_base);
    tid = threadIdx.x;
    lane = tid % 32;
    const int warp = tid / 32, warpgroup = warp / 4;
    warp_in_group = warp % 4;
    wm = warpgroup % Cfg::kWgM;
    wn = warpgroup / Cfg::kWgM;
    const int channel_blocks = (p.num_tiles + Cfg::kBlockTiles - 1) / Cfg::kBlockTiles;
    first_tile = static_cast<int>(blockIdx.x % channel_blocks) * Cfg::kBlockTiles;
    first_pixel = static_cast<int>(blockIdx.x / channel_blocks) * Cfg::kBlockPixels;
  }
};

// The copy engine's side (the TMA kernel): mbarriers that complete when
// their expected bytes have landed, and the two copies that land them.
__device__ __forceinline__ void MbarrierInit(uint32_t barrier, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(barrier), "r"(arrivals)
               : "memory");
}
// This phase completes once `bytes` more have landed (one arrival).
__device__ __forceinline__ void MbarrierArriveExpectTx(uint32_t barrier, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(barrier),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void MbarrierWait(uint32_t barrier, uint32_t phase_parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n}\n" ::"r"(barrier),
      "r"(phase_parity)
      : "memory");
}
// `bytes` (a multiple of 16) from global `src` to shared `dst`, both
// 16-byte aligned.
__device__ __forceinline__ void BulkCopy(uint32_t dst, const void* src, uint32_t bytes,
                                         uint32_t barrier) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
      ::"r"(dst), "l"(src), "r"(bytes), "r"(barrier)
      : "memory");
}
// One im2col box of `map`: the pixels from the one whose window starts at
// (w, h) of image n, each read at (w + offset_w, h + offset_h) and channels
// c .. c + 63, zero where that lies outside the input.
__device__ __forceinline__ void Im2colLoad(uint32_t dst, const CUtensorMap* map, int c, int w,
                                           int h, int n, uint16_t offset_w, uint16_t offset_h,
                                           uint32_t barrier) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.im2col.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6], {%7, %8};\n"
      ::"r"(dst), "l"(map), "r"(c), "r"(w), "r"(h), "r"(n), "r"(barrier), "h"(offset_w),
      "h"(offset_h)
      : "memory");
}

// Stage `stage`'s product: waits for the previous stage's wgmma (the A and
// metadata registers of a wgmma in flight must not change), loads this
// warp's A fragments and metadata, and issues the first `valid_steps` k32
// steps (all but where a tap's last stage is half empty), left in flight.
template <typename T, typename Cfg>
__device__ __forceinline__ void MultiplyStage(float (&acc)[Cfg::kWgPixels / 2],
                                              const BlockPlace<Cfg>& place, int stage,
                                              int valid_steps) {
  const int tile_in_block = place.wm * 4 + place.warp_in_group, lane = place.lane;
  WgmmaWait<0>();
  FenceOperands(acc);
  const unsigned char* stage_ptr = place.smem + stage * Cfg::kStageBytes;
  const uint4* a_frags = reinterpret_cast<const uint4*>(stage_ptr + Cfg::kBStageBytes);
  const uint32_t* metas =
      reinterpret_cast<const uint32_t*>(stage_ptr + Cfg::kBStageBytes + Cfg::kAStageBytes);
  uint4 a[Cfg::kSubSteps];
  uint32_t e[Cfg::kSubSteps];
#pragma unroll
  for (int sub = 0; sub < Cfg::kSubSteps; ++sub) {
    a[sub] = a_frags[(sub * Cfg::kBlockTiles + tile_in_block) * 32 + lane];
    e[sub] = metas[(sub * Cfg::kBlockTiles + tile_in_block) * 32 + lane];
  }
  const uint32_t b_base =
      place.base + stage * Cfg::kStageBytes + place.wn * Cfg::kWgPixels * kRowBytes;
  WgmmaFence();
#pragma unroll
  for (int sub = 0; sub < Cfg::kSubSteps; ++sub) {
    // k32 step `sub` is the 64 bytes at 64 sub of every 128-byte row.
    if (sub < valid_steps) WgmmaSparse<T>(acc, a[sub], BDescriptor(b_base + sub * 64), e[sub]);
  }
  WgmmaCommit();
}

// The epilogue, once every wgmma has retired and every thread has passed a
// barrier after its last read of the pipeline's shared memory.
template <typename T, typename Cfg>
__device__ __forceinline__ void StoreAccumulators(const Params& p,
                                                  const float (&acc)[Cfg::kWgPixels / 2],
                                                  const BlockPlace<Cfg>& place) {
  // acc[4 j + 2 h + c]: channel 16 place.warp_in_group + g + 8 h of the
  // warpgroup's 64, pixel 8 j + 2 t + c of its kWgPixels.
  const int g = place.lane / 4, t = place.lane % 4;
  // Split-K writes this part's fp32 sums, before bias and activation, to
  // partials[part][pixel][K]; otherwise the tile goes through shared memory.
  const bool split = Cfg::kSplitK && p.partials != nullptr;
  float* partials = split ? p.partials + static_cast<int64_t>(blockIdx.y) * p.num_pixels * p.K
                          : nullptr;
  uint16_t* out_tile = reinterpret_cast<uint16_t*>(place.smem);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int k_local = place.wm * 64 + place.warp_in_group * 16 + g + 8 * h;
    const int k = place.first_tile * static_cast<int>(kSparse24TileRows) + k_local;
    const float bias =
        (!split && p.bias != nullptr && k < p.K) ? sparse24::ToFloat<T>(p.bias[k]) : 0.f;
#pragma unroll
    for (int j = 0; j < Cfg::kWgPixels / 8; ++j) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int px_local = place.wn * Cfg::kWgPixels + j * 8 + 2 * t + c;
        const float sum = acc[4 * j + 2 * h + c];
        if (!split) {
          out_tile[px_local * Cfg::kOutRowHalves + k_local] =
              sparse24::FromFloat<T>(sparse24::Activate(sum + bias, p.activation));
        } else if (k < p.K && place.first_pixel + px_local < p.num_pixels) {
          partials[static_cast<int64_t>(place.first_pixel + px_local) * p.K + k] = sum;
        }
      }
    }
  }
  if (split) return;
  __syncthreads();
  sparse24::StoreOutputTile<Cfg::kBlockPixels, Cfg::kBlockRows, Cfg::kThreads>(
      p, out_tile, Cfg::kOutRowHalves, place.first_pixel,
      place.first_tile * static_cast<int>(kSparse24TileRows));
}
#endif  // ESCORT_WGMMA_BODY

// kHalfLastStage: C % 64 == 32, so each tap's last stage holds 32 channels.
// A template argument so that C % 64 == 0, the common case, pays nothing for
// it (measured: ~5% on VGG-16 conv3_2 when it was a run-time check).
template <typename T, typename Cfg, bool kHalfLastStage>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    Sparse24WgmmaKernel(const Params p) {
#ifdef ESCORT_WGMMA_BODY
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const BlockPlace<Cfg> place(smem_raw, p);
  int4* row_source = reinterpret_cast<int4*>(place.smem + Cfg::kPipeBytes);

  // Each B row's source: the first input pixel of its image, the window's
  // top-left corner, and whether the row is an output pixel at all.
  const int image_pixels = p.P * p.Q;
  for (int row = place.tid; row < Cfg::kBlockPixels; row += Cfg::kThreads) {
    const int pixel = place.first_pixel + row;
    int4 source = make_int4(0, 0, 0, 0);
    if (pixel < p.num_pixels) {
      const int n = pixel / image_pixels, rest = pixel % image_pixels;
      source = make_int4(n * p.H * p.W, (rest / p.Q) * p.stride_h - p.pad_top,
                         (rest % p.Q) * p.stride_w - p.pad_left, 1);
    }
    row_source[row] = source;
  }
  __syncthreads();

  // This block's stages (all of them unless split-K), and the first one's
  // tap and channels: stages are loaded in order from there.
  const int total_stages = NumStages(p);
  const int first_stage = static_cast<int>(blockIdx.y) * p.stages_per_split;
  const int num_stage_loads = min(p.stages_per_split, total_stages - first_stage);
  const int stages_per_tap = StagesPerTap(p);
  sparse24::TapCursor tap;
  tap.r = first_stage / stages_per_tap / p.S;
  tap.s = first_stage / stages_per_tap % p.S;
  tap.c = first_stage % stages_per_tap * kStageChannels;
  const int chunk = place.tid % 8;  // this thread's 16 bytes of every row it stages
  auto load_stage = [&](int index, int stage) {
    const uint32_t stage_base = place.base + stage * Cfg::kStageBytes;
#pragma unroll
    for (int i = 0; i < Cfg::kRowsPerThread; ++i) {
      const int row = place.tid / 8 + i * (Cfg::kThreads / 8);
      const int4 source = row_source[row];
      const int ih = source.y + tap.r * p.dilation_h;
      const int iw = source.z + tap.s * p.dilation_w;
      // Channels past C (the second half of a tap's last stage where C % 64
      // == 32) are zero filled like the padding.
      const bool valid = source.w && ih >= 0 && ih < p.H && iw >= 0 && iw < p.W &&
                         (!kHalfLastStage || tap.c + chunk * 8 < p.C);
      const uint16_t* src =
          valid ? p.input + static_cast<int64_t>(source.x + ih * p.W + iw) * p.C + tap.c + chunk * 8
                : p.input;
      // 128-byte swizzle: 16-byte chunk c of row r sits at chunk c ^ (r % 8).
      sparse24::CpAsync16(stage_base + row * kRowBytes + ((chunk ^ (row & 7)) << 4), src, valid);
    }
    // This stage's k32 steps in the packed filter: [tap][C / 32].
    const int64_t first_step =
        kHalfLastStage
            ? (static_cast<int64_t>(tap.r * p.S + tap.s) * p.C + tap.c) / kSparse24StepChannels
            : static_cast<int64_t>(first_stage + index) * Cfg::kSubSteps;
    const int valid_steps =
        kHalfLastStage
            ? min(Cfg::kSubSteps, (p.C - tap.c) / static_cast<int>(kSparse24StepChannels))
            : Cfg::kSubSteps;
    tap.Advance(kStageChannels, p);
    sparse24::StageFilter<Cfg::kSubSteps, Cfg::kBlockTiles, Cfg::kThreads>(
        p, stage_base + Cfg::kBStageBytes, stage_base + Cfg::kBStageBytes + Cfg::kAStageBytes,
        first_step, valid_steps, place.first_tile);
  };

  // A stage's wgmma stays in flight while the next stage is waited for, its
  // barrier passed and its successor's loads issued; it is retired just
  // before the next stage's A and metadata registers are loaded (ptxas
  // serialises every wgmma if registers feeding one are written while another
  // is in flight). So at a barrier only the previous stage may still be read,
  // and loads run kStages - 2 stages ahead.
  constexpr int kStages = Cfg::kStages;
  constexpr int kAhead = kStages - 2;
  float acc[Cfg::kWgPixels / 2];
#pragma unroll
  for (int i = 0; i < Cfg::kWgPixels / 2; ++i) acc[i] = 0.f;
  for (int s = 0; s < kAhead; ++s) {
    if (s < num_stage_loads) load_stage(s, s);
    sparse24::CpAsyncCommit();
  }
  for (int index = 0; index < num_stage_loads; ++index) {
    sparse24::CpAsyncWait<kAhead - 1>();
    // cp.async writes through the generic proxy and wgmma reads through the
    // async proxy: each thread fences its own writes before the barrier.
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    // The stage refilled now last fed stage index - 2's wgmma, which every
    // warpgroup retired before this barrier.
    const int next = index + kAhead;
    if (next < num_stage_loads) load_stage(next, next % kStages);
    sparse24::CpAsyncCommit();

    MultiplyStage<T, Cfg>(acc, place, index % kStages, Cfg::kSubSteps);
  }
  WgmmaWait<0>();
  FenceOperands(acc);
  sparse24::CpAsyncWait<0>();
  __syncthreads();

  StoreAccumulators<T, Cfg>(p, acc, place);
#endif  // ESCORT_WGMMA_BODY
}

// The same product with every load on the copy engine: per stage thread 0
// issues one im2col TMA load for B (the block's pixels x 64 channels of one
// tap, zero filled outside the image and past C, written with the 128-byte
// swizzle the B descriptor names) and two bulk copies per k32 step for A and
// its metadata, all completing on the stage's mbarrier. Nsight Compute had
// the cp.async kernel above issue ~108 instructions per wgmma per warp, most
// of them its loads' addressing, and the tensor pipe 29% busy.
template <typename T, typename Cfg, bool kHalfLastStage>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    Sparse24TmaKernel(const Params p, const __grid_constant__ CUtensorMap input_map) {
#ifdef ESCORT_WGMMA_BODY
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const BlockPlace<Cfg> place(smem_raw, p);
  // One mbarrier per stage buffer, past the pipeline (which the output tile
  // shares): buffer b's j-th load completes its phase j, parity j & 1.
  const uint32_t full = place.base + Cfg::kPipeBytes;
  if (place.tid == 0) {
    for (int stage = 0; stage < Cfg::kStages; ++stage) MbarrierInit(full + 8 * stage, 1);
    // Visible to the copy engine before its first complete_tx.
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  const int total_stages = NumStages(p);
  const int first_stage = static_cast<int>(blockIdx.y) * p.stages_per_split;
  const int num_stage_loads = min(p.stages_per_split, total_stages - first_stage);
  const int stages_per_tap = StagesPerTap(p);
  // Where the block's first pixel's window starts; the copy engine walks
  // the following pixels through the map's bounding box (across rows and
  // images), so one box is the block's B whatever its pixels' positions.
  const int image_pixels = p.P * p.Q;
  const int first_image = place.first_pixel / image_pixels;
  const int first_rest = place.first_pixel % image_pixels;
  const int window_h = first_rest / p.Q * p.stride_h - p.pad_top;
  const int window_w = first_rest % p.Q * p.stride_w - p.pad_left;
  // The block's tiles past K (a partial last channel block) get copies of
  // the last tile, never stored, so that every fragment is well formed.
  const int valid_tiles = min(Cfg::kBlockTiles, p.num_tiles - place.first_tile);
  constexpr uint32_t kTileABytes = 32 * 16, kTileMetaBytes = 32 * 4;
  // Stage `index` of this block into buffer index % kStages (thread 0).
  auto load_stage = [&](int index) {
    const int stage_index = first_stage + index;
    const int tap = stage_index / stages_per_tap;
    const int c = stage_index % stages_per_tap * kStageChannels;
    const int valid_steps =
        kHalfLastStage ? min(Cfg::kSubSteps, (p.C - c) / static_cast<int>(kSparse24StepChannels))
                       : Cfg::kSubSteps;
    const uint32_t stage_base = place.base + (index % Cfg::kStages) * Cfg::kStageBytes;
    const uint32_t barrier = full + 8 * (index % Cfg::kStages);
    MbarrierArriveExpectTx(barrier, Cfg::kBStageBytes + valid_steps * Cfg::kBlockTiles *
                                                            (kTileABytes + kTileMetaBytes));
    Im2colLoad(stage_base, &input_map, c, window_w, window_h, first_image,
               static_cast<uint16_t>(tap % p.S * p.dilation_w),
               static_cast<uint16_t>(tap / p.S * p.dilation_h), barrier);
    const int64_t first_step = (static_cast<int64_t>(tap) * p.C + c) / kSparse24StepChannels;
    for (int sub = 0; sub < valid_steps; ++sub) {
      const int64_t fragment = ((first_step + sub) * p.num_tiles + place.first_tile) * 32;
      const uint32_t a_dst = stage_base + Cfg::kBStageBytes + sub * Cfg::kBlockTiles * kTileABytes;
      const uint32_t meta_dst = stage_base + Cfg::kBStageBytes + Cfg::kAStageBytes +
                                sub * Cfg::kBlockTiles * kTileMetaBytes;
      BulkCopy(a_dst, p.packed + fragment, valid_tiles * kTileABytes, barrier);
      BulkCopy(meta_dst, p.metadata + fragment, valid_tiles * kTileMetaBytes, barrier);
      const int64_t last_tile = fragment + (valid_tiles - 1) * 32;
      for (int tile = valid_tiles; tile < Cfg::kBlockTiles; ++tile) {
        BulkCopy(a_dst + tile * kTileABytes, p.packed + last_tile, kTileABytes, barrier);
        BulkCopy(meta_dst + tile * kTileMetaBytes, p.metadata + last_tile, kTileMetaBytes,
                 barrier);
      }
    }
  };

  // As in Sparse24WgmmaKernel: a stage's wgmma stays in flight until the
  // next stage's A registers are loaded, so at a barrier only the previous
  // stage may still be read, and loads run kStages - 2 stages ahead.
  constexpr int kStages = Cfg::kStages;
  constexpr int kAhead = kStages - 2;
  float acc[Cfg::kWgPixels / 2];
#pragma unroll
  for (int i = 0; i < Cfg::kWgPixels / 2; ++i) acc[i] = 0.f;
  if (place.tid == 0) {
    for (int s = 0; s < kAhead && s < num_stage_loads; ++s) load_stage(s);
  }
  for (int index = 0; index < num_stage_loads; ++index) {
    // Every warpgroup retired stage index - 2's wgmma before this barrier,
    // so its buffer may be refilled.
    __syncthreads();
    const int next = index + kAhead;
    if (place.tid == 0 && next < num_stage_loads) {
      // The buffer was last read through the generic proxy (the A loads).
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      load_stage(next);
    }
    // Warp 0 whole again before the .aligned wgmma instructions.
    __syncwarp();
    MbarrierWait(full + 8 * (index % kStages), (index / kStages) & 1);
    const int valid_steps =
        kHalfLastStage && (first_stage + index) % stages_per_tap == stages_per_tap - 1
            ? 1
            : Cfg::kSubSteps;
    MultiplyStage<T, Cfg>(acc, place, index % kStages, valid_steps);
  }
  WgmmaWait<0>();
  FenceOperands(acc);
  __syncthreads();
  StoreAccumulators<T, Cfg>(p, acc, place);
#endif  // ESCORT_WGMMA_BODY
}

// out = activation(sum of the splits' partials, in split order, + bias).
template <typename T>
__global__ void FinishSplitsKernel(const Params p, int splits) {
#ifdef ESCORT_WGMMA_BODY
  const int64_t n = static_cast<int64_t>(p.num_pixels) * p.K;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    float v = 0.f;
    for (int split = 0; split < splits; ++split) v += p.partials[split * n + i];
    const int k = static_cast<int>(i % p.K);
    if (p.bias != nullptr) v += sparse24::ToFloat<T>(p.bias[k]);
    p.output[i] = sparse24::FromFloat<T>(sparse24::Activate(v, p.activation));
  }
#endif  // ESCORT_WGMMA_BODY
}

// How a convolution runs: its block shape, its grid, and the number of
// parts its stages are split into (split-K) where the grid alone would leave
// multiprocessors idle.
enum class Shape { kTall, kWide, kNarrow, kSmallWide, kSmallNarrow };
struct Plan {
  Shape shape;
  int block_pixels;  // the shape's Config::kBlockPixels
  int64_t blocks;
  int splits;
  int stages_per_split;
};

// Each part keeps enough stages for the pipeline to fill; the partial sums
// cost splits x output x 4 bytes of workspace.
constexpr int kMinStagesPerSplit = 4;
constexpr int kMaxSplits = 16;

template <typename Cfg>
Plan MakePlan(Shape shape, const Params& p, int num_sms) {
  const int stages = NumStages(p);
  Plan plan{shape, Cfg::kBlockPixels, sparse24::NumBlocks<Cfg>(p), 1, stages};
  if (Cfg::kSplitK && plan.blocks < num_sms) {
    // The split grid stays within one block per multiprocessor: rounding up
    // instead queued a second wave of parts and, on an H100 at batch 32, made
    // grids of 98-129 blocks up to 1.4x slower than unsplit.
    const int64_t wanted = num_sms / plan.blocks;
    const int splits = static_cast<int>(std::min<int64_t>(
        {wanted, int64_t{stages / kMinStagesPerSplit}, int64_t{kMaxSplits}}));
    if (splits > 1) {
      plan.stages_per_split = (stages + splits - 1) / splits;
      plan.splits = (stages + plan.stages_per_split - 1) / plan.stages_per_split;
    }
  }
  return plan;
}

// 64-channel blocks where K is that small; the larger tiles where the grid
// still gives every multiprocessor a block, 256-channel ones only where no
// channel block is left part empty.
Plan ChoosePlan(const Params& p, int num_sms) {
  if (p.K % TallConfig::kBlockRows == 0 && sparse24::NumBlocks<TallConfig>(p) >= num_sms) {
    return MakePlan<TallConfig>(Shape::kTall, p, num_sms);
  }
  if (p.K <= NarrowConfig::kBlockRows) {
    return sparse24::NumBlocks<NarrowConfig>(p) >= num_sms
               ? MakePlan<NarrowConfig>(Shape::kNarrow, p, num_sms)
               : MakePlan<SmallNarrowConfig>(Shape::kSmallNarrow, p, num_sms);
  }
  return sparse24::NumBlocks<WideConfig>(p) >= num_sms
             ? MakePlan<WideConfig>(Shape::kWide, p, num_sms)
             : MakePlan<SmallWideConfig>(Shape::kSmallWide, p, num_sms);
}

int64_t PartialsBytes(const Params& p, const Plan& plan) {
  return plan.splits > 1 ? int64_t{plan.splits} * p.num_pixels * p.K * 4 : 0;
}

// A 4-D im2col load's tap offsets are 8-bit (PTX ISA; CUTLASS asks for
// (R - 1) x dilation < 255 likewise).
constexpr int64_t kMaxIm2colOffset = 254;

// The TMA kernel's view of the NHWC input (Sparse24TmaKernel): 16-bit
// elements, dims (C, W, H, N) innermost first; im2col boxes of 64 channels x
// `block_pixels` pixels, whose windows start at the positions the output
// pixels' windows do (the bounding box from -pad to the last output pixel's
// window, walked with the conv's strides), zero filled outside, with the
// 128-byte swizzle. Returns false where the geometry is outside what the
// copy engine offers (padding or a window corner beyond +-128 pixels, a
// window wider than 255 pixels, a stride above 8, C below one box) or the
// encoder is missing or refuses; the cp.async kernel then runs.
// cuTensorMapEncodeIm2col is a driver function, which the runtime hands
// out, so the op links no libcuda.
bool EncodeInputMap(const ConvGeometry& g, const void* input, int block_pixels,
                    CUtensorMap* map) {
  static const auto encode = [] {
    void* function = nullptr;
    cudaDriverEntryPointQueryResult found;
#if CUDART_VERSION >= 12050
    const cudaError_t err = cudaGetDriverEntryPointByVersion(
        "cuTensorMapEncodeIm2col", &function, 12000, cudaEnableDefault, &found);
#else
    const cudaError_t err = cudaGetDriverEntryPoint("cuTensorMapEncodeIm2col", &function,
                                                    cudaEnableDefault, &found);
#endif
    if (err != cudaSuccess || found != cudaDriverEntryPointSuccess) {
      // Not the caller's error: the cp.async kernel runs instead, and the
      // launch status it reads must not be this one.
      (void)cudaGetLastError();
      return PFN_cuTensorMapEncodeIm2col_v12000{nullptr};
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeIm2col_v12000>(function);
  }();
  // The last output pixel's window start, relative to the last input pixel
  // (what the encoder calls the upper corner).
  const int64_t upper_h = (g.P - 1) * g.stride_h - g.pad_top - (g.H - 1);
  const int64_t upper_w = (g.Q - 1) * g.stride_w - g.pad_left - (g.W - 1);
  const auto corner = [](int64_t v) { return v >= -128 && v <= 127; };
  if (encode == nullptr || g.C < kStageChannels || g.stride_h > 8 || g.stride_w > 8 ||
      !corner(-g.pad_top) || !corner(-g.pad_left) || !corner(upper_h) || !corner(upper_w) ||
      (g.R - 1) * g.dilation_h > kMaxIm2colOffset ||
      (g.S - 1) * g.dilation_w > kMaxIm2colOffset ||
      reinterpret_cast<uintptr_t>(input) % 16 != 0) {
    return false;
  }
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(g.C), static_cast<cuuint64_t>(g.W),
                              static_cast<cuuint64_t>(g.H), static_cast<cuuint64_t>(g.N)};
  const cuuint64_t strides[3] = {dims[0] * 2, dims[0] * dims[1] * 2,
                                 dims[0] * dims[1] * dims[2] * 2};
  // W first, as the dims.
  const int lower[2] = {static_cast<int>(-g.pad_left), static_cast<int>(-g.pad_top)};
  const int upper[2] = {static_cast<int>(upper_w), static_cast<int>(upper_h)};
  const cuuint32_t element_strides[4] = {1, static_cast<cuuint32_t>(g.stride_w),
                                         static_cast<cuuint32_t>(g.stride_h), 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 4, const_cast<void*>(input), dims, strides,
                lower, upper, static_cast<cuuint32_t>(kStageChannels),
                static_cast<cuuint32_t>(block_pixels), element_strides,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Runs `plan`, split only when `partials` is set (Launch sets it only for
// a plan with splits), on the TMA kernel where the input map can be made.
template <typename T, typename Cfg>
cudaError_t LaunchConfig(Params p, const ConvGeometry& g, const Plan& plan, float* partials,
                         cudaStream_t stream) {
  const int splits = partials != nullptr ? plan.splits : 1;
  p.partials = partials;
  p.stages_per_split = partials != nullptr ? plan.stages_per_split : NumStages(p);
  const dim3 grid(static_cast<unsigned>(plan.blocks), static_cast<unsigned>(splits));
  const bool half_last_stage = p.C % kStageChannels != 0;
  CUtensorMap input_map;
  if (EncodeInputMap(g, p.input, Cfg::kBlockPixels, &input_map)) {
    if (half_last_stage) {
      Sparse24TmaKernel<T, Cfg, true>
          <<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p, input_map);
    } else {
      Sparse24TmaKernel<T, Cfg, false>
          <<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p, input_map);
    }
  } else if (half_last_stage) {
    Sparse24WgmmaKernel<T, Cfg, true><<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  } else {
    Sparse24WgmmaKernel<T, Cfg, false><<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || splits == 1) return err;
  constexpr int kFinishThreads = 256;
  const int64_t outputs = int64_t{p.num_pixels} * p.K;
  const int finish_blocks = static_cast<int>(
      std::min<int64_t>(4096, (outputs + kFinishThreads - 1) / kFinishThreads));
  FinishSplitsKernel<T><<<finish_blocks, kFinishThreads, 0, stream>>>(p, splits);
  return cudaGetLastError();
}

template <typename T>
cudaError_t Launch(const Params& p, const ConvGeometry& g, int num_sms, void* workspace,
                   size_t workspace_bytes, cudaStream_t stream) {
  const Plan plan = ChoosePlan(p, num_sms);
  const int64_t needed = PartialsBytes(p, plan);
  float* partials = needed > 0 && workspace != nullptr &&
                            workspace_bytes >= static_cast<size_t>(needed)
                        ? static_cast<float*>(workspace)
                        : nullptr;
  switch (plan.shape) {
    case Shape::kTall:
      return LaunchConfig<T, TallConfig>(p, g, plan, partials, stream);
    case Shape::kWide:
      return LaunchConfig<T, WideConfig>(p, g, plan, partials, stream);
    case Shape::kNarrow:
      return LaunchConfig<T, NarrowConfig>(p, g, plan, partials, stream);
    case Shape::kSmallWide:
      return LaunchConfig<T, SmallWideConfig>(p, g, plan, partials, stream);
    case Shape::kSmallNarrow:
      break;
  }
  return LaunchConfig<T, SmallNarrowConfig>(p, g, plan, partials, stream);
}

template <typename T, typename Cfg>
cudaError_t AllowSharedMemory() {
  for (const void* kernel : {reinterpret_cast<const void*>(Sparse24WgmmaKernel<T, Cfg, false>),
                             reinterpret_cast<const void*>(Sparse24WgmmaKernel<T, Cfg, true>),
                             reinterpret_cast<const void*>(Sparse24TmaKernel<T, Cfg, false>),
                             reinterpret_cast<const void*>(Sparse24TmaKernel<T, Cfg, true>)}) {
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t AllowSharedMemoryAll() {
  for (cudaError_t e : {AllowSharedMemory<T, TallConfig>(), AllowSharedMemory<T, WideConfig>(),
                        AllowSharedMemory<T, NarrowConfig>(),
                        AllowSharedMemory<T, SmallWideConfig>(),
                        AllowSharedMemory<T, SmallNarrowConfig>()}) {
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t PrepareSparse24Wgmma(bool* available) {
  *available = false;
#ifdef ESCORT_SPARSE24_WGMMA
  int device = 0, major = 0, minor = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  }
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  }
  // sm_90a code runs on compute capability 9.0 only.
  if (err != cudaSuccess || major != 9 || minor != 0) return err;
  err = AllowSharedMemoryAll<__half>();
  if (err == cudaSuccess) err = AllowSharedMemoryAll<__nv_bfloat16>();
  *available = err == cudaSuccess;
  return err;
#else
  return cudaSuccess;
#endif
}

size_t Sparse24WgmmaWorkspaceBytes(const ConvGeometry& geometry, int num_sms) {
  const Params p = sparse24::MakeParams(geometry, nullptr, nullptr, nullptr, nullptr,
                                        Activation::kNone, nullptr);
  return static_cast<size_t>(PartialsBytes(p, ChoosePlan(p, num_sms)));
}

bool Sparse24WgmmaLoadsWithTma(const ConvGeometry& geometry, int num_sms) {
#ifdef ESCORT_SPARSE24_WGMMA
  const Params p = sparse24::MakeParams(geometry, nullptr, nullptr, nullptr, nullptr,
                                        Activation::kNone, nullptr);
  CUtensorMap map;
  // Any aligned address encodes alike; the map is not used.
  const void* aligned_input = reinterpret_cast<const void*>(uintptr_t{1} << 20);
  return EncodeInputMap(geometry, aligned_input, ChoosePlan(p, num_sms).block_pixels, &map);
#else
  (void)geometry;
  (void)num_sms;
  return false;
#endif
}

cudaError_t Sparse24Conv2DWgmma(HalfType type, const ConvGeometry& geometry,
                                const void* input, const void* packed_values,
                                const uint32_t* metadata, const void* bias,
                                Activation activation, void* output, int num_sms,
                                void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const Params p = sparse24::MakeParams(geometry, input, packed_values, metadata, bias,
                                        activation, output);
  return type == HalfType::kFloat16
             ? Launch<__half>(p, geometry, num_sms, workspace, workspace_bytes, stream)
             : Launch<__nv_bfloat16>(p, geometry, num_sms, workspace, workspace_bytes, stream);
}

}  // namespace escort
