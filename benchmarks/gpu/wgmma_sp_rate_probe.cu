// How fast can the 2:4 kernel's wgmma issue pattern go at all? The TMA
// kernel (cc/kernels/sparse24_conv_wgmma.cu) runs VGG-16 conv3_2 at batch 32
// at about a third of the sparse tensor cores' nominal rate, and neither L2
// nor the SMs look busy (NOTES.md, v5). This probe times the pattern's parts
// alone, with every operand already in shared memory or registers, so that
// the gap between them is the ceiling each part sets:
//   dense_rs:      dense wgmma m64n128k16 (A in registers), 4 per commit,
//                  one group left in flight: the dense reference rate;
//   sp_deep:       sparse m64n128k32, 8 per commit, one group left in flight;
//   sp_wait0:      sparse, 2 per commit (one 64-channel stage), wait_group 0
//                  before each stage: the kernel's retire-before-reload rule;
//   sp_wait0_lds:  sp_wait0, and each stage's A fragments and metadata loaded
//                  from shared memory after the wait, as MultiplyStage does;
//   sp_wait0_lds_bar: that and a block-wide barrier per stage, as the TMA
//                  kernel's loop has;
//   sp_wait1_lds_2sets(_bar): the alternative, A and metadata in two register
//                  sets used in turn, so that one stage's wgmma stays in
//                  flight while the next stage's fragments load (wait_group 1).
// One block per SM (120 KB of shared memory each: two would not fit), 1, 2
// or 4 warpgroups, every warpgroup running kStages stages side by side.
// Prints one JSON line per (mode, warpgroups): dense-equivalent TFLOP/s and
// the cycles a stage takes at the SM's maximum clock (more than it really
// takes if the clock runs lower; the timed kernel also fills the 36 KB of
// operands first, a few percent at one warpgroup).
//   nvcc -O3 -I../.. -gencode=arch=compute_90a,code=sm_90a wgmma_sp_rate_probe.cu \
//     -o wgmma_sp_rate_probe && ./wgmma_sp_rate_probe
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

#include "cc/kernels/cuda_check_test.h"

enum Mode {
  kDenseRs, kSpDeep, kSpWait0, kSpWait0Lds, kSpWait0LdsBar, kSpWait1Lds2Sets,
  kSpWait1Lds2SetsBar, kNumModes
};
constexpr const char* kModeNames[kNumModes] = {
    "dense_rs", "sp_deep", "sp_wait0", "sp_wait0_lds", "sp_wait0_lds_bar",
    "sp_wait1_lds_2sets", "sp_wait1_lds_2sets_bar"};
constexpr int kSmemBytes = 120 * 1024;
constexpr int kBBytes = 16 * 1024;        // 128 rows of 128 bytes: one stage's B
constexpr int kAFragBytes = 8 * 128 * 16;  // 8 stages' A fragments of a warpgroup
constexpr int kMetaBytes = 8 * 128 * 4;    // and their metadata
constexpr int kStages = 2048;       // per warpgroup per launch

__device__ __forceinline__ uint64_t BDescriptor(uint32_t address) {
  return static_cast<uint64_t>((address & 0x3FFFF) >> 4) | (uint64_t{1} << 16) |
         (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

#define ACC_OUT(i) "+f"(d[i])
#define ACC8(i) ACC_OUT(i), ACC_OUT(i + 1), ACC_OUT(i + 2), ACC_OUT(i + 3), ACC_OUT(i + 4), \
                ACC_OUT(i + 5), ACC_OUT(i + 6), ACC_OUT(i + 7)
#define ACC_REGS \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

__device__ __forceinline__ void SparseMma(float (&d)[64], const uint4& a, uint64_t b,
                                          uint32_t e) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %70, 0;\n"
               "wgmma.mma_async.sp.sync.aligned.m64n128k32.f32.f16.f16 " ACC_REGS
               ", {%64, %65, %66, %67}, %68, %69, 0, p, 1, 1, 0;\n}\n"
               : ACC8(0), ACC8(8), ACC8(16), ACC8(24), ACC8(32), ACC8(40), ACC8(48), ACC8(56)
               : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "l"(b), "r"(e), "n"(1));
}
__device__ __forceinline__ void DenseMma(float (&d)[64], const uint4& a, uint64_t b) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " ACC_REGS
               ", {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
               : ACC8(0), ACC8(8), ACC8(16), ACC8(24), ACC8(32), ACC8(40), ACC8(48), ACC8(56)
               : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "l"(b), "n"(1));
}
__device__ __forceinline__ void Fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void Commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void Wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
__device__ __forceinline__ void FenceAcc(float (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// One 64-channel stage of one warpgroup, as the 2:4 kernel runs it: wait
// until at most kPending groups are in flight, load this stage's A fragment
// and metadata into `a` and `e` (kLoad; else they stay), two sparse k32
// wgmma, commit, and (kBarrier) the block-wide barrier.
template <int kPending, bool kLoad, bool kBarrier>
__device__ __forceinline__ void SparseStage(float (&d)[64], uint4& a, uint32_t& e,
                                            const uint4* a_frags, const uint32_t* metas,
                                            int slot, uint64_t b0, uint64_t b1) {
  Wait<kPending>();
  FenceAcc(d);
  if constexpr (kLoad) {
    a = a_frags[slot];
    e = metas[slot];
  }
  Fence();
  SparseMma(d, a, b0, e);
  SparseMma(d, a, b1, e);
  Commit();
  if constexpr (kBarrier) __syncthreads();
}

template <int kMode>
__global__ void __launch_bounds__(512, 1) RateKernel(float* sink) {
  extern __shared__ __align__(1024) unsigned char smem[];
  // B and the A fragments: small nonzero halves (1/64), so that the tensor
  // cores multiply real numbers; 2:4 metadata: each group keeps elements 0, 1.
  for (int i = threadIdx.x; i < (kBBytes + kAFragBytes) / 2; i += blockDim.x) {
    reinterpret_cast<__half*>(smem)[i] = __float2half(((i * 7) % 13 - 6) / 64.f);
  }
  uint32_t* metas = reinterpret_cast<uint32_t*>(smem + kBBytes + kAFragBytes);
  for (int i = threadIdx.x; i < kMetaBytes / 4; i += blockDim.x) metas[i] = 0x44444444u;
  __syncthreads();
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint4* a_frags = reinterpret_cast<const uint4*>(smem + kBBytes);
  const int lane_slot = threadIdx.x % 128;
  // A different fragment each stage, as a pipeline's stages are.
  auto slot = [&](int stage) { return (stage % 8) * 128 + lane_slot; };
  uint4 a = a_frags[lane_slot];
  uint32_t e = metas[lane_slot];
  float d[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) d[i] = 0.f;
  const uint64_t b0 = BDescriptor(base), b1 = BDescriptor(base + 64);
  constexpr bool kBarrier = kMode == kSpWait0LdsBar || kMode == kSpWait1Lds2SetsBar;
  if constexpr (kMode == kDenseRs) {
    // One stage = 64 channels = 4 dense k16 steps: the dense FLOPs of two
    // sparse k32 steps.
#pragma unroll 1
    for (int stage = 0; stage < kStages; ++stage) {
      Fence();
      DenseMma(d, a, b0);
      DenseMma(d, a, b0 + 2);
      DenseMma(d, a, b1);
      DenseMma(d, a, b1 + 2);
      Commit();
      Wait<1>();
    }
  } else if constexpr (kMode == kSpDeep) {
    // 4 stages (8 wgmma) per group. Not unrolled: two iterations' 16 wgmma
    // in flight made ptxas serialise them (C7512).
#pragma unroll 1
    for (int stage = 0; stage < kStages; stage += 4) {
      Fence();
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        SparseMma(d, a, b0, e);
        SparseMma(d, a, b1, e);
      }
      Commit();
      Wait<1>();
    }
  } else if constexpr (kMode == kSpWait1Lds2Sets || kMode == kSpWait1Lds2SetsBar) {
    // Even stages on (a, e), odd ones on (a_odd, e_odd): the set being
    // loaded last fed the wgmma two stages back, which wait_group 1 retired.
    uint4 a_odd = a;
    uint32_t e_odd = e;
#pragma unroll 1
    for (int stage = 0; stage < kStages; stage += 2) {
      SparseStage<1, true, kBarrier>(d, a, e, a_frags, metas, slot(stage), b0, b1);
      SparseStage<1, true, kBarrier>(d, a_odd, e_odd, a_frags, metas, slot(stage + 1), b0, b1);
    }
  } else {
#pragma unroll 1
    for (int stage = 0; stage < kStages; ++stage) {
      SparseStage<0, kMode != kSpWait0, kBarrier>(d, a, e, a_frags, metas, slot(stage), b0, b1);
    }
  }
  Wait<0>();
  FenceAcc(d);
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < 64; ++i) sum += d[i];
  if (sum == 12345.f) sink[threadIdx.x] = sum;  // keeps the products alive
}

template <int kMode>
void Run(int num_sms, float* sink) {
  CHECK_CUDA(cudaFuncSetAttribute(RateKernel<kMode>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  kSmemBytes));
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  int clock_khz = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0));
  for (int warpgroups : {1, 2, 4}) {
    const dim3 grid(num_sms), block(128 * warpgroups);
    RateKernel<kMode><<<grid, block, kSmemBytes>>>(sink);
    CHECK_CUDA(cudaGetLastError());
    constexpr int kLaunches = 10;
    CHECK_CUDA(cudaEventRecord(start));
    for (int i = 0; i < kLaunches; ++i) RateKernel<kMode><<<grid, block, kSmemBytes>>>(sink);
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0.f;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    const double seconds = ms / 1e3 / kLaunches;
    // Dense-equivalent FLOPs of one stage of one warpgroup: 64 x 128 x 64 x 2.
    const double flops = 2.0 * 64 * 128 * 64 * kStages * warpgroups * num_sms;
    printf("{\"mode\": \"%s\", \"warpgroups\": %d, \"us\": %.1f, \"dense_equiv_tflops\": %.1f, "
           "\"cycles_per_stage_at_max_clock\": %.1f}\n",
           kModeNames[kMode], warpgroups, seconds * 1e6, flops / seconds / 1e12,
           seconds * clock_khz * 1e3 / kStages);
  }
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
}

int main() {
  int num_sms = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, 0));
  float* sink = nullptr;
  CHECK_CUDA(cudaMalloc(&sink, 512 * sizeof(float)));
  Run<kDenseRs>(num_sms, sink);
  Run<kSpDeep>(num_sms, sink);
  Run<kSpWait0>(num_sms, sink);
  Run<kSpWait0Lds>(num_sms, sink);
  Run<kSpWait0LdsBar>(num_sms, sink);
  Run<kSpWait1Lds2Sets>(num_sms, sink);
  Run<kSpWait1Lds2SetsBar>(num_sms, sink);
  CHECK_CUDA(cudaFree(sink));
  return 0;
}
