// CUDA entry point of the Escort direct sparse convolution (see csr_conv.h
// for the CSR format and the geometry). Framework-free: callers pass their
// own stream and get a cudaError_t back.
#ifndef ESCORT_CC_KERNELS_CSR_CONV_GPU_H_
#define ESCORT_CC_KERNELS_CSR_CONV_GPU_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "cc/kernels/csr_conv.h"

namespace escort {

// fp32 sparse convolution on `stream`. All pointers are device memory:
//   input        geometry.InputSize() floats in geometry.data_format
//   row_offsets  K + 1 int32, column_indices / values `nnz` entries each
//   bias         K floats, or nullptr
//   output       geometry.OutputSize() floats in geometry.data_format
// The arguments must have passed ValidateCsrFilter (on a host copy) and
// ComputeConvGeometry. Returns the launch status (cudaGetLastError after
// the launch); the work itself completes asynchronously on `stream`.
// Nothing is launched (cudaSuccess) when N, P, Q or K is zero. Returns
// cudaErrorInvalidValue when no tile fits in shared memory, which takes an
// effective (dilated) filter window of roughly 150 x 150 or more.
cudaError_t CsrConv2DGpu(const ConvGeometry& geometry, const float* input,
                         const int32_t* row_offsets,
                         const int32_t* column_indices, const float* values,
                         int64_t nnz, const float* bias, Activation activation,
                         float* output, cudaStream_t stream);

// Tile shape of one launch. A block computes `warps * channels_per_warp`
// output channels for `images` images x `tile_h` x `tile_w` output pixels;
// each lane holds `pixels_per_lane` (image, pixel) slots of each of its
// warp's channels in registers, so images * tile_h * tile_w must not exceed
// 32 * pixels_per_lane. Input channels are staged in shared memory
// `chunk_c` at a time. Valid values:
//   (pixels_per_lane, channels_per_warp, row_slots) one of the instances
//   listed in csr_conv_gpu.cu, warps in {4, 8}, images and chunk_c powers
//   of two, images <= 32, chunk_c <= 512, row_parts as below.
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
  // Shortens each warp's serial chain where
  // a small grid leaves the SMs short of warps (batch 1) without adding
  // blocks. Blocks whose rows overflow the preload pool run each row in one
  // warp (the other parts idle).
  int row_parts = 1;
};

// The tile shape CsrConv2DGpu picks for `geometry` and `nnz` nonzeros on a
// device with `num_sms` multiprocessors (`clusters`: whether split_c > 1 may
// be used there): the cheapest valid config under a cost model of issued
// instructions, shared-memory loads, staging, chunk latency and waves, and
// for small grids (batch 1) of each warp's chain of dependent instructions,
// fitted to H100 timings (benchmarks/gpu/NOTES.md).
CsrConvGpuConfig ChooseCsrConvGpuConfig(const ConvGeometry& geometry,
                                        int64_t nnz, int num_sms,
                                        bool clusters);

// CsrConv2DGpu with an explicit tile shape, for tuning and tests. Returns
// cudaErrorInvalidValue for a config outside the valid set above.
cudaError_t CsrConv2DGpuWithConfig(const ConvGeometry& geometry,
                                   const float* input,
                                   const int32_t* row_offsets,
                                   const int32_t* column_indices,
                                   const float* values, int64_t nnz,
                                   const float* bias, Activation activation,
                                   float* output,
                                   const CsrConvGpuConfig& config,
                                   cudaStream_t stream);

}  // namespace escort

#endif  // ESCORT_CC_KERNELS_CSR_CONV_GPU_H_
