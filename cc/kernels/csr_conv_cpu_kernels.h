// The ISA-specific inner kernels of CsrConv2DCpu and the signatures they
// share. Only csr_conv_cpu*.cc include this.
#ifndef ESCORT_CC_KERNELS_CSR_CONV_CPU_KERNELS_H_
#define ESCORT_CC_KERNELS_CSR_CONV_CPU_KERNELS_H_

#include <cstddef>
#include <cstdint>

#include "cc/kernels/csr_conv.h"

namespace escort {
namespace internal {

// Computes, for output channels k in [k_begin, k_end), `num_vectors` vectors
// of consecutive output positions of a band ("lines", see csr_conv_cpu.cc):
//   tile[(k - k_begin) * tile_pitch + m] = activation(
//       initial + sum over i in [starts[k * starts_stride],
//                                starts[k * starts_stride + 1]) ascending of
//       values[i] * line[offsets[i] + m]  +  bias[k] (if bias is not null)),
// m < num_vectors * lanes, where initial is the tile's own value with
// `accumulate`, else 0 (starts = the CSR row offsets with stride 1 covers
// whole rows; the input-channel blocks of csr_conv_cpu.cc pass one block of
// each row per call). One rounding per term (FMA where the ISA has it), the
// same chain for every m, so no result depends on m's place in a vector;
// a call with `accumulate` continues the previous call's chain exactly.
// Bias and activation are applied while the sums are still in registers,
// which saves a pass over the tile. `line` must be readable at every
// line[offsets[i] + m] so formed.
using ChunkFn = void (*)(const float* line, const std::ptrdiff_t* offsets,
                         const float* values, const int32_t* starts,
                         int64_t starts_stride, bool accumulate,
                         const float* bias, Activation activation,
                         int64_t k_begin, int64_t k_end, int num_vectors,
                         float* tile, int64_t tile_pitch);
// A ChunkFn's instance for one fixed num_vectors (its register block): the
// chunk functions dispatch on num_vectors through tables of these.
using BlockFn = void (*)(const float* line, const std::ptrdiff_t* offsets,
                         const float* values, const int32_t* starts,
                         int64_t starts_stride, bool accumulate,
                         const float* bias, Activation activation,
                         int64_t k_begin, int64_t k_end, float* tile,
                         int64_t tile_pitch);

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols:
// the layout changes between NHWC tensors and the channel-major band
// buffer and tile. Moves bits only, so every ISA gives the same result.
// With dst_overhang, each dst row may also be written (with unspecified
// values) up to kTransposeOverhang floats past its end, which saves masked
// stores; src is never read outside [rows) x [cols).
using TransposeFn = void (*)(const float* src, int64_t src_stride, float* dst,
                             int64_t dst_stride, int64_t rows, int64_t cols,
                             bool dst_overhang);
constexpr int64_t kTransposeOverhang = 8;

struct CpuKernels {
  int lanes;        // floats per vector
  int max_vectors;  // most vectors one chunk call takes (its register block)
  ChunkFn chunk;
  TransposeFn transpose;
};

CpuKernels ScalarKernels();
#if defined(__x86_64__) || defined(__i386__)
CpuKernels Avx2Kernels();
CpuKernels Avx512Kernels();
#endif

}  // namespace internal
}  // namespace escort

#endif  // ESCORT_CC_KERNELS_CSR_CONV_CPU_KERNELS_H_
