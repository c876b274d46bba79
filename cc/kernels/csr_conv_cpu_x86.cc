// AVX2+FMA and AVX-512 inner kernels of CsrConv2DCpu. The build passes no
// ISA flags, so each function carries its own target attribute and
// csr_conv_cpu.cc calls them only after checking the CPU (runtime dispatch).
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "cc/kernels/csr_conv_cpu_kernels.h"

namespace escort {
namespace internal {
namespace {

// One register block: U accumulator vectors over consecutive positions, for
// one output channel at a time. Each nonzero is one broadcast and U FMAs
// whose loads are contiguous. The fold expressions unroll over U exactly, so
// the accumulators live in registers.
template <std::size_t... U>
__attribute__((target("avx2,fma"))) void Avx2Block(
    std::index_sequence<U...>, const float* line, const std::ptrdiff_t* offsets,
    const float* values, const int32_t* starts, int64_t starts_stride,
    bool accumulate, const float* bias, Activation activation, int64_t k_begin,
    int64_t k_end, float* tile, int64_t tile_pitch) {
  for (int64_t k = k_begin; k < k_end; ++k) {
    float* out = tile + (k - k_begin) * tile_pitch;
    __m256 acc[sizeof...(U)];
    if (accumulate) {
      ((acc[U] = _mm256_loadu_ps(out + 8 * U)), ...);
    } else {
      ((acc[U] = _mm256_setzero_ps()), ...);
    }
    const int32_t* range = starts + k * starts_stride;
    for (int32_t i = range[0]; i < range[1]; ++i) {
      const __m256 weight = _mm256_set1_ps(values[i]);
      const float* source = line + offsets[i];
      ((acc[U] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(source + 8 * U),
                                 acc[U])),
       ...);
    }
    if (bias != nullptr) {
      const __m256 b = _mm256_set1_ps(bias[k]);
      ((acc[U] = _mm256_add_ps(acc[U], b)), ...);
    }
    // max(0, x) and min(6, x) return x when x is NaN, as std::max(x, 0)
    // and std::min(x, 6) do (the reference and the scalar path).
    if (activation != Activation::kNone) {
      const __m256 zero = _mm256_setzero_ps();
      ((acc[U] = _mm256_max_ps(zero, acc[U])), ...);
    }
    if (activation == Activation::kRelu6) {
      const __m256 six = _mm256_set1_ps(6.0f);
      ((acc[U] = _mm256_min_ps(six, acc[U])), ...);
    }
    (_mm256_storeu_ps(out + 8 * U, acc[U]), ...);
  }
}

template <std::size_t... U>
__attribute__((target("avx512f"))) void Avx512Block(
    std::index_sequence<U...>, const float* line, const std::ptrdiff_t* offsets,
    const float* values, const int32_t* starts, int64_t starts_stride,
    bool accumulate, const float* bias, Activation activation, int64_t k_begin,
    int64_t k_end, float* tile, int64_t tile_pitch) {
  for (int64_t k = k_begin; k < k_end; ++k) {
    float* out = tile + (k - k_begin) * tile_pitch;
    __m512 acc[sizeof...(U)];
    if (accumulate) {
      ((acc[U] = _mm512_loadu_ps(out + 16 * U)), ...);
    } else {
      ((acc[U] = _mm512_setzero_ps()), ...);
    }
    const int32_t* range = starts + k * starts_stride;
    for (int32_t i = range[0]; i < range[1]; ++i) {
      const __m512 weight = _mm512_set1_ps(values[i]);
      const float* source = line + offsets[i];
      ((acc[U] = _mm512_fmadd_ps(weight, _mm512_loadu_ps(source + 16 * U),
                                 acc[U])),
       ...);
    }
    if (bias != nullptr) {
      const __m512 b = _mm512_set1_ps(bias[k]);
      ((acc[U] = _mm512_add_ps(acc[U], b)), ...);
    }
    // NaN handling as in Avx2Block. The masked forms with every lane set:
    // GCC's plain _mm512_max_ps and _mm512_min_ps pass an undefined vector
    // that -Wall flags.
    constexpr __mmask16 kAll = 0xFFFF;
    if (activation != Activation::kNone) {
      const __m512 zero = _mm512_setzero_ps();
      ((acc[U] = _mm512_mask_max_ps(zero, kAll, zero, acc[U])), ...);
    }
    if (activation == Activation::kRelu6) {
      const __m512 six = _mm512_set1_ps(6.0f);
      ((acc[U] = _mm512_mask_min_ps(six, kAll, six, acc[U])), ...);
    }
    (_mm512_storeu_ps(out + 16 * U, acc[U]), ...);
  }
}

// 12 accumulators of the 16 ymm registers leave room for the broadcast
// weight; 24 of the 32 zmm likewise. More would not help: the loop is bound
// by its loads (mostly from L2), not by the per-nonzero overhead (8, 12 and
// 14 ymm blocks measured within 3% of each other on Zen 4).
constexpr int kAvx2MaxVectors = 12;
constexpr int kAvx512MaxVectors = 24;

template <std::size_t N>
void Avx2BlockOf(const float* line, const std::ptrdiff_t* offsets,
                 const float* values, const int32_t* starts,
                 int64_t starts_stride, bool accumulate, const float* bias,
                 Activation activation, int64_t k_begin, int64_t k_end,
                 float* tile, int64_t tile_pitch) {
  Avx2Block(std::make_index_sequence<N>(), line, offsets, values, starts,
            starts_stride, accumulate, bias, activation, k_begin, k_end,
            tile, tile_pitch);
}

template <std::size_t N>
void Avx512BlockOf(const float* line, const std::ptrdiff_t* offsets,
                   const float* values, const int32_t* starts,
                   int64_t starts_stride, bool accumulate, const float* bias,
                   Activation activation, int64_t k_begin, int64_t k_end,
                   float* tile, int64_t tile_pitch) {
  Avx512Block(std::make_index_sequence<N>(), line, offsets, values, starts,
              starts_stride, accumulate, bias, activation, k_begin, k_end,
              tile, tile_pitch);
}

// Tables indexed by num_vectors - 1.
template <std::size_t... N>
constexpr std::array<BlockFn, sizeof...(N)> Avx2Table(
    std::index_sequence<N...>) {
  return {&Avx2BlockOf<N + 1>...};
}
template <std::size_t... N>
constexpr std::array<BlockFn, sizeof...(N)> Avx512Table(
    std::index_sequence<N...>) {
  return {&Avx512BlockOf<N + 1>...};
}

void Avx2Chunk(const float* line, const std::ptrdiff_t* offsets,
               const float* values, const int32_t* starts,
               int64_t starts_stride, bool accumulate, const float* bias,
               Activation activation, int64_t k_begin, int64_t k_end,
               int num_vectors, float* tile, int64_t tile_pitch) {
  static constexpr auto kTable =
      Avx2Table(std::make_index_sequence<kAvx2MaxVectors>());
  kTable[num_vectors - 1](line, offsets, values, starts, starts_stride,
                          accumulate, bias, activation, k_begin, k_end, tile,
                          tile_pitch);
}

void Avx512Chunk(const float* line, const std::ptrdiff_t* offsets,
                 const float* values, const int32_t* starts,
                 int64_t starts_stride, bool accumulate, const float* bias,
                 Activation activation, int64_t k_begin, int64_t k_end,
                 int num_vectors, float* tile, int64_t tile_pitch) {
  static constexpr auto kTable =
      Avx512Table(std::make_index_sequence<kAvx512MaxVectors>());
  kTable[num_vectors - 1](line, offsets, values, starts, starts_stride,
                          accumulate, bias, activation, k_begin, k_end, tile,
                          tile_pitch);
}

// Transposes the 8x8 block a[0..7] in registers (unpack, shuffle, lane
// permute) into b[0..7].
__attribute__((target("avx2"))) inline void Transpose8x8(const __m256* a,
                                                         __m256* b) {
  const __m256 t0 = _mm256_unpacklo_ps(a[0], a[1]);
  const __m256 t1 = _mm256_unpackhi_ps(a[0], a[1]);
  const __m256 t2 = _mm256_unpacklo_ps(a[2], a[3]);
  const __m256 t3 = _mm256_unpackhi_ps(a[2], a[3]);
  const __m256 t4 = _mm256_unpacklo_ps(a[4], a[5]);
  const __m256 t5 = _mm256_unpackhi_ps(a[4], a[5]);
  const __m256 t6 = _mm256_unpacklo_ps(a[6], a[7]);
  const __m256 t7 = _mm256_unpackhi_ps(a[6], a[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44);
  const __m256 u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44);
  const __m256 u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44);
  const __m256 u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44);
  const __m256 u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  b[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  b[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  b[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  b[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  b[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  b[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  b[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  b[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// Lanes [0, count) set.
__attribute__((target("avx2"))) inline __m256i FirstLanes(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// 8x8 blocks through registers; edge blocks with masked loads, and masked
// stores only where dst may not overhang (masked stores are slow on AMD).
// AVX-512 machines use it too: it is not on the FMA path.
__attribute__((target("avx2"))) void Avx2Transpose(
    const float* src, int64_t src_stride, float* dst, int64_t dst_stride,
    int64_t rows, int64_t cols, bool dst_overhang) {
  __m256 a[8], b[8];
  for (int64_t r = 0; r < rows; r += 8) {
    const int64_t block_rows = rows - r < 8 ? rows - r : 8;
    const __m256i row_mask = FirstLanes(block_rows);
    for (int64_t c = 0; c < cols; c += 8) {
      const float* s = src + r * src_stride + c;
      float* d = dst + c * dst_stride + r;
      const int64_t block_cols = cols - c < 8 ? cols - c : 8;
      if (block_rows == 8 && block_cols == 8) {
        for (int i = 0; i < 8; ++i) a[i] = _mm256_loadu_ps(s + i * src_stride);
        Transpose8x8(a, b);
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(d + i * dst_stride, b[i]);
      } else {
        const __m256i col_mask = FirstLanes(block_cols);
        for (int i = 0; i < 8; ++i) {
          a[i] = i >= block_rows ? _mm256_setzero_ps()
                 : block_cols == 8
                     ? _mm256_loadu_ps(s + i * src_stride)
                     : _mm256_maskload_ps(s + i * src_stride, col_mask);
        }
        Transpose8x8(a, b);
        for (int i = 0; i < block_cols; ++i) {
          if (block_rows == 8 || dst_overhang) {
            _mm256_storeu_ps(d + i * dst_stride, b[i]);
          } else {
            _mm256_maskstore_ps(d + i * dst_stride, row_mask, b[i]);
          }
        }
      }
    }
  }
}

}  // namespace

CpuKernels Avx2Kernels() {
  return {8, kAvx2MaxVectors, &Avx2Chunk, &Avx2Transpose};
}
CpuKernels Avx512Kernels() {
  return {16, kAvx512MaxVectors, &Avx512Chunk, &Avx2Transpose};
}

}  // namespace internal
}  // namespace escort

#endif  // defined(__x86_64__) || defined(__i386__)
