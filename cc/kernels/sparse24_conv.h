// 2:4 structured sparsity for the GPU's sparse tensor cores (mma.sp,
// compute capability 8.0 and newer): the host-side part, plain C++.
//
// A filter is 2:4 along its input channels when, for every output channel k
// and filter tap (r, s), each aligned group of 4 consecutive input channels
// holds at most 2 nonzeros: what TFMOT's
// prune_low_magnitude(..., sparsity_m_by_n=(2, 4)) produces for Conv2D. In
// the CSR format of csr_conv.h (column j = (r * S + s) * C + c) the groups
// are j / 4, provided C is a multiple of 4.
//
// The tensor-core kernel (sparse24_conv_gpu.h) reads such a filter as the
// sparse operand A of an implicit GEMM, out[k][pixel] =
// sum_j A[k][j] * im2col(input)[j][pixel], in steps of 32 columns (one tap,
// 32 channels: hence C % 32 == 0) and tiles of 16 output channels. Each
// (step, tile) is one m16n8k32 A fragment, stored so that each lane of a
// warp loads its part with one 16-byte and one 4-byte read:
//
//   values:   [step][tile][lane][8] 16-bit values: a lane with group
//             g = lane / 4 and t = lane % 4 holds, as registers 0..3, the two
//             kept values of 4-channel group t of rows g, g + 8, then those of
//             group t + 4 of rows g, g + 8 (PTX ISA, "Matrix fragments for
//             mma.m16n8k16", on the 16 x 16 compressed matrix).
//   metadata: [step][tile][lane] uint32: for lanes with t < 2 (sparsity
//             selector 0), bits 0..15 describe groups 4t..4t+3 of row g and
//             bits 16..31 the same groups of row g + 8, 4 bits per group:
//             the positions (0..3) of its two kept values, ascending, in bits
//             0-1 and 2-3. Lanes with t >= 2 hold 0.
//
// Groups with fewer than 2 nonzeros keep explicit zeros, as do rows past K
// (K is rounded up to a multiple of 16).
#ifndef ESCORT_CC_KERNELS_SPARSE24_CONV_H_
#define ESCORT_CC_KERNELS_SPARSE24_CONV_H_

#include <cstdint>
#include <string>
#include <vector>

namespace escort {

// Channels per implicit-GEMM step and output channels per A tile.
inline constexpr int64_t kSparse24StepChannels = 32;
inline constexpr int64_t kSparse24TileRows = 16;
inline constexpr int64_t kSparse24LanesPerFragment = 32;
inline constexpr int64_t kSparse24ValuesPerLane = 8;

// The packed form of a 2:4 filter, computed from its CSR indices alone:
// the values are gathered on the device (PackSparse24ValuesGpu), so that a
// filter whose values change keeps its layout.
struct Sparse24Layout {
  int64_t num_steps = 0;  // R * S * C / 32
  int64_t num_tiles = 0;  // ceil(K / 16)
  // For each packed value, in the order above: its index into the CSR
  // `values`, or -1 for an explicit zero.
  std::vector<int32_t> value_index;
  std::vector<uint32_t> metadata;  // [step][tile][lane]

  int64_t NumPackedValues() const {
    return num_steps * num_tiles * kSparse24LanesPerFragment *
           kSparse24ValuesPerLane;
  }
};

// Builds `layout` for the K x (R*S*C) CSR filter (row_offsets has K + 1
// entries) and returns "" when the filter is 2:4 along C and C is a multiple
// of 32. Otherwise returns why not, naming the first offending output
// channel and tap, and leaves `layout` unspecified. The CSR arrays must have
// passed ValidateCsrFilter.
std::string BuildSparse24Layout(int64_t K, int64_t R, int64_t S, int64_t C,
                                const int32_t* row_offsets,
                                const int32_t* column_indices,
                                Sparse24Layout* layout);

}  // namespace escort

#endif  // ESCORT_CC_KERNELS_SPARSE24_CONV_H_
