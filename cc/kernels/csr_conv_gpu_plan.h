// Host-side planning of the CUDA sparse convolution (csr_conv_gpu.cu): the
// tile shape of a launch and the shared-memory layout it implies. Plain
// C++17 without CUDA headers, so the planner is compiled with the host
// compiler and tested on any machine. Everything the planner and the
// launcher must agree on (the kernel instances, the shared-memory limits,
// the layout and the validity rules) is defined here once.
#ifndef ESCORT_CC_KERNELS_CSR_CONV_GPU_PLAN_H_
#define ESCORT_CC_KERNELS_CSR_CONV_GPU_PLAN_H_

#include <cstdint>

#include "cc/kernels/csr_conv.h"

// The kernel instances (pixels_per_lane PT, channels_per_warp KW,
// row_slots PC) that csr_conv_gpu.cu compiles; X(PT, KW, PC) per instance.
// PC 1 is the general path; PC > 1 needs stride_w 1 and
// tile_w == (32 / images) * PC, tile_h == PT / PC.
#define ESCORT_KERNEL_INSTANCES(X)                                        \
  X(2, 1, 1) X(2, 2, 1) X(4, 1, 1) X(4, 2, 1) X(4, 4, 1) X(8, 1, 1)       \
  X(8, 2, 1) X(8, 4, 1) X(16, 1, 1) X(16, 2, 1) X(4, 2, 4) X(4, 4, 4)     \
  X(8, 2, 4) X(8, 4, 4) X(8, 2, 8) X(8, 4, 8) X(16, 1, 8) X(16, 2, 8)     \
  X(16, 2, 4) X(16, 1, 4)

namespace escort {

// Tile shape of one launch. A block computes `warps * channels_per_warp`
// output channels for `images` images x `tile_h` x `tile_w` output pixels;
// each lane holds `pixels_per_lane` (image, pixel) slots of each of its
// warp's channels in registers, so images * tile_h * tile_w must not exceed
// 32 * pixels_per_lane. Input channels are staged in shared memory
// `chunk_c` at a time. Valid values (gpu_plan::ConfigValid):
//   (pixels_per_lane, channels_per_warp, row_slots) one of
//   ESCORT_KERNEL_INSTANCES, warps in {4, 8}, images and chunk_c powers of
//   two, images <= 32, chunk_c <= 512, row_parts as below.
// row_slots 1 is the general path (any stride). row_slots > 1 is the fast
// path for stride_w 1: a lane's slots form rows of row_slots pixels, so
// tile_w must be (32 / images) * row_slots and tile_h
// pixels_per_lane / row_slots.
struct CsrConvGpuConfig {
  int pixels_per_lane = 8;
  int channels_per_warp = 2;
  int warps = 8;
  int images = 32;
  int tile_h = 2;
  int tile_w = 4;
  int chunk_c = 16;
  int row_slots = 1;
  // Bucket the block's CSR rows by chunk in shared memory once, instead of
  // finding each chunk's nonzeros per chunk (needs <= 64 chunks; blocks
  // whose rows overflow the pool fall back to the per-chunk path).
  int preload = 1;
  // Blocks that share one tile, each taking a contiguous range of the input
  // channel chunks, summed through distributed shared memory (a thread-block
  // cluster). 1 to 8 and at most the number of chunks; above 1 needs an
  // sm_90+ device and a build with sm_90 code (else cudaErrorInvalidValue).
  // Raises the block count where a grid is too small to hide latency.
  int split_c = 1;
  // Warps per output channel group: each CSR row of the block is cut into
  // `row_parts` contiguous pieces, each run by its own warp over the same
  // staged input; the partial tiles are summed in shared memory before the
  // epilogue. 1, 2 or 4; the block has 32 * warps * row_parts threads, at
  // most 512, or 1024 where pixels_per_lane * channels_per_warp <= 8.
  // Shortens each warp's serial chain where a small grid leaves the SMs
  // short of warps (batch 1) without adding blocks. Blocks whose rows
  // overflow the preload pool run each row in one warp (the other parts
  // idle).
  int row_parts = 1;
};

namespace gpu_plan {

// Number of kernel instances and their (pt, kw, pc), in the order of
// ESCORT_KERNEL_INSTANCES.
struct KernelInstance {
  int pt, kw, pc;
};
#define ESCORT_PLAN_LIST(PT, KW, PC) KernelInstance{PT, KW, PC},
inline constexpr KernelInstance kKernelInstances[] = {
    ESCORT_KERNEL_INSTANCES(ESCORT_PLAN_LIST)};
#undef ESCORT_PLAN_LIST
inline constexpr int kNumKernelInstances =
    static_cast<int>(sizeof(kKernelInstances) / sizeof(kKernelInstances[0]));

// Position of instance (pt, kw, pc) in kKernelInstances, or -1 where it is
// not compiled.
constexpr int KernelInstanceIndex(int pt, int kw, int pc) {
  for (int i = 0; i < kNumKernelInstances; ++i) {
    if (kKernelInstances[i].pt == pt && kKernelInstances[i].kw == kw &&
        kKernelInstances[i].pc == pc) {
      return i;
    }
  }
  return -1;
}

constexpr int kMaxSmemBytes = 227 * 1024;  // opt-in limit per block, sm_80+.
constexpr int kSmemPerSm = 228 * 1024;
// Channels per tap that one per-chunk list covers (the path without the
// preload): chunks beyond it run in windows, so that a one-chunk tile of a
// wide layer does not need lists for all its channels.
constexpr int kListChannels = 128;

// Threads per block an instance allows (row parts multiply the warps):
// instances with few accumulators (PT * KW <= 8: at most 64 registers) run
// up to 32 warps, the others up to 16 with up to 128 registers, the cap
// they had at 256 threads and two blocks per SM. The kernel's
// __launch_bounds__ use it too.
constexpr int MaxThreads(int pt, int kw) { return pt * kw <= 8 ? 1024 : 512; }

// ceil(log2(v)) for v >= 1.
inline int Log2(int v) {
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}
inline bool IsPow2(int v) { return v > 0 && (v & (v - 1)) == 0; }
inline int AlignUp(int v, int a) { return (v + a - 1) / a * a; }

// How the NHWC staging (StageNhwc in csr_conv_gpu.cu) splits a chunk of
// chunk_c channels: channel lanes per warp (8, fewer only below 8 channels)
// and channels per thread (up to 4).
inline int StageChannelLanes(int chunk_c) { return chunk_c < 8 ? chunk_c : 8; }
inline int StageChannelsPerThread(int chunk_c) {
  const int kc = chunk_c / StageChannelLanes(chunk_c);
  return kc < 4 ? kc : 4;
}

// Shared-memory layout of a block: the staged input tile with its halo
// (tih x tiw positions of `images` images), the output staging, the
// per-chunk lists or the preloaded rows, and the tables; byte offsets.
struct Layout {
  int tih, tiw, nbti, chan_pitch, tile_floats, slot_pitch;
  int lists_off, cursors_off, tapoff_off, stab_off, otab_off, smem_bytes;
  int pool_cap, pool_off, starts_off, nch;
};

Layout MakeLayout(const ConvGeometry& g, const CsrConvGpuConfig& c,
                  int64_t nnz);

// Whether `c` is a config the kernel runs for `g` and `nnz` (the rules at
// CsrConvGpuConfig), including that its layout fits in kMaxSmemBytes.
bool ConfigValid(const ConvGeometry& g, const CsrConvGpuConfig& c,
                 int64_t nnz);

}  // namespace gpu_plan

// What the planner needs to know of the device, as data.
struct CsrConvGpuDeviceInfo {
  int num_sms = 1;
  // Whether split_c > 1 (thread-block clusters) may be used.
  bool clusters = false;
  // Registers per thread of each kernel instance as compiled for this
  // device, in the order of gpu_plan::kKernelInstances (cudaFuncAttributes::
  // numRegs); 0 where unknown, and the planner then estimates them. They
  // set how many warps fit on an SM, which the cost model needs exactly:
  // an estimate off by 30 registers costs some layers a third of their
  // resident warps.
  int registers[gpu_plan::kNumKernelInstances] = {};
};

// The cheapest valid config for `geometry` and `nnz` nonzeros on `device`
// under a cost model of issued instructions, shared-memory loads, staging,
// chunk latency and waves, and for small grids (batch 1) of each warp's
// chain of dependent instructions, fitted to H100 timings
// (benchmarks/gpu/NOTES.md). A pure function of its arguments. Where no
// config fits in shared memory (an effective filter window of roughly
// 150 x 150 or more) the result fails gpu_plan::ConfigValid.
CsrConvGpuConfig PlanCsrConvGpu(const ConvGeometry& geometry, int64_t nnz,
                                const CsrConvGpuDeviceInfo& device);

}  // namespace escort

#endif  // ESCORT_CC_KERNELS_CSR_CONV_GPU_PLAN_H_
