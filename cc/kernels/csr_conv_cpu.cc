// CPU direct sparse convolution (SkimCaffe-style, see
// /work/shared/escort-notes.md), with runtime ISA dispatch.
//
// Work unit: one image n, one band of output rows [p0, p0 + band_rows), one
// block of output channels. Per band, the input rows the band reads are
// transposed into a channel-major "band buffer" with zeroed padding, its rows
// and columns split into stride phases:
//   buffer[c][row phase][column phase][y][x] holds the padded input at
//   padded row (p0 + y) * stride_h + row phase,
//   padded column x * stride_w + column phase.
// Output pixel (p0 + pl, q) at filter tap (r, s) then reads
//   [c][(r * dilation_h) % stride_h][(s * dilation_w) % stride_w]
//   [pl + (r * dilation_h) / stride_h][q + (s * dilation_w) / stride_w],
// i.e. buffer[m + offset(r, s, c)] with m = pl * row_pitch + q. So every
// stride and dilation reduces to one "line" of positions m in which
// consecutive output pixels of the band are consecutive floats, and one
// stretched offset per nonzero serves every pixel. Positions with
// q >= Q (the columns past the output width) are computed and dropped; they
// cost (S - 1) * dilation_w / stride_w lanes per row, much less than
// rounding each output row up to whole vectors on small images.
//
// The ISA kernel (csr_conv_cpu_x86.cc) broadcasts each nonzero and FMAs it
// into a register block of vectors of consecutive positions; here the plan,
// the band buffer, bias, activation and the store in NHWC or NCHW.
//
// Input-channel blocks: where a call sweeps its band buffers many times
// (large images, batches), each row's nonzeros are reordered per call by
// block of input channels, so that the 16 output channels of a tile take
// one block's band data from L1 in turn instead of the whole band from L2.
//
// Determinism: every output element is one chain of FMAs (or multiply-adds
// on the scalar path) over its row's nonzeros in ascending column order
// (within each input-channel block, blocks in ascending order), starting
// from 0, then + bias, then the activation. Nothing in that chain depends on
// the band, chunk or thread that computes it; the blocks depend on the
// geometry (batch size included) and the filter's density.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "cc/kernels/csr_conv.h"
#include "cc/kernels/csr_conv_cpu_internal.h"
#include "cc/kernels/csr_conv_cpu_kernels.h"

namespace escort {
namespace internal {
namespace {

// Portable fallback: plain multiply-add on float lanes, which the compiler
// vectorizes with whatever the baseline ISA offers (SSE2, NEON).
constexpr int kScalarLanes = 4;
constexpr int kScalarMaxVectors = 8;

float Activate(float value, Activation activation) {
  if (activation != Activation::kNone) value = std::max(value, 0.0f);
  if (activation == Activation::kRelu6) value = std::min(value, 6.0f);
  return value;
}

template <int U>
void ScalarBlock(const float* line, const std::ptrdiff_t* offsets,
                 const float* values, const int32_t* starts,
                 int64_t starts_stride, bool accumulate, const float* bias,
                 Activation activation, int64_t k_begin, int64_t k_end,
                 float* tile, int64_t tile_pitch) {
  constexpr int kWidth = U * kScalarLanes;
  for (int64_t k = k_begin; k < k_end; ++k) {
    float* out = tile + (k - k_begin) * tile_pitch;
    float acc[kWidth] = {};
    if (accumulate) std::copy(out, out + kWidth, acc);
    const int32_t* range = starts + k * starts_stride;
    for (int32_t i = range[0]; i < range[1]; ++i) {
      const float weight = values[i];
      const float* source = line + offsets[i];
      for (int m = 0; m < kWidth; ++m) acc[m] += weight * source[m];
    }
    // No "+ 0" without a bias: a partial sum of -0 must stay -0 for the
    // next call to continue the chain exactly.
    if (bias != nullptr) {
      for (int m = 0; m < kWidth; ++m) acc[m] += bias[k];
    }
    for (int m = 0; m < kWidth; ++m) out[m] = Activate(acc[m], activation);
  }
}

void ScalarChunk(const float* line, const std::ptrdiff_t* offsets,
                 const float* values, const int32_t* starts,
                 int64_t starts_stride, bool accumulate, const float* bias,
                 Activation activation, int64_t k_begin, int64_t k_end,
                 int num_vectors, float* tile, int64_t tile_pitch) {
  static constexpr BlockFn kTable[kScalarMaxVectors] = {
      &ScalarBlock<1>, &ScalarBlock<2>, &ScalarBlock<3>, &ScalarBlock<4>,
      &ScalarBlock<5>, &ScalarBlock<6>, &ScalarBlock<7>, &ScalarBlock<8>};
  kTable[num_vectors - 1](line, offsets, values, starts, starts_stride,
                          accumulate, bias, activation, k_begin, k_end, tile,
                          tile_pitch);
}

void ScalarTranspose(const float* src, int64_t src_stride, float* dst,
                     int64_t dst_stride, int64_t rows, int64_t cols,
                     bool /*dst_overhang*/) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      dst[c * dst_stride + r] = src[r * src_stride + c];
    }
  }
}

}  // namespace

CpuKernels ScalarKernels() {
  return {kScalarLanes, kScalarMaxVectors, &ScalarChunk, &ScalarTranspose};
}

namespace {

// Output channels per tile: the tile (channels x register block) stays in L1
// between the kernel writing it and the store reading it.
constexpr int64_t kTileChannels = 16;
// Band buffer budget: with a filter block (below) and the tile, about half
// of a 1 MiB L2, since the kernel sweeps the band once per output channel.
constexpr int64_t kBandBufferBytes = 320 * 1024;
// Geometries whose band buffer would exceed this (only huge dilations or
// paddings get near it: the buffer holds (R - 1) * dilation rows of halo)
// take DirectRows instead, so memory stays bounded whatever passes
// validation.
constexpr int64_t kMaxBandBufferBytes = int64_t{64} << 20;
// Enough units that a pool of several threads stays balanced at batch 1.
constexpr int64_t kMinUnits = 16;
// Offsets and values of one block of output channels, which a unit reads
// once per chunk: small enough to share L2 with the band buffer.
constexpr int64_t kFilterBlockBytes = 128 * 1024;
// Input-channel blocks: a tile's output channels sweep one block of the
// band's channels at a time, about this much band data, so that all but the
// first of them read it from L1 (32 KiB with the tile) instead of L2.
constexpr int64_t kChannelBlockBytes = 16 * 1024;
// Blocks are used only where such a block also holds at least this many
// nonzeros per row on average: reloading and storing the accumulators per
// block must stay cheap (very sparse filters, e.g. 2-3% dense, lose).
constexpr int64_t kMinBlockNonzeros = 16;
// Reordering the filter by blocks costs, per call, about one sweep of the
// band buffers; with fewer sweeps per call (images x bands x chunks) than
// this it does not pay.
constexpr int64_t kMinSweepsForChannelBlocks = 8;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The distinct values of (tap * dilation) % stride over taps [0, taps),
// ascending: the stride phases the filter reads, so the buffer holds no
// phase the filter skips. The sequence repeats after at most `stride` taps.
std::vector<int64_t> UsedPhases(int64_t taps, int64_t dilation,
                                int64_t stride) {
  std::vector<int64_t> phases;
  for (int64_t t = 0; t < std::min(taps, stride); ++t) {
    phases.push_back(t * dilation % stride);
  }
  std::sort(phases.begin(), phases.end());
  phases.erase(std::unique(phases.begin(), phases.end()), phases.end());
  return phases;
}

int64_t PhaseIndex(const std::vector<int64_t>& phases, int64_t phase) {
  return std::lower_bound(phases.begin(), phases.end(), phase) -
         phases.begin();
}

struct Plan {
  CpuKernels kernel;
  std::vector<int64_t> row_phases, column_phases;
  int64_t row_pitch;     // x extent: Q + (S - 1) * dilation_w / stride_w
  int64_t band_rows;     // output rows per band
  int64_t buffer_rows;   // y extent: band_rows + (R - 1) * dilation_h / stride_h
  int64_t plane;         // buffer_rows * row_pitch
  int64_t channel_stride;  // all planes of one channel, plus a gap
  int64_t buffer_floats;   // C channels plus the slack the last vector reads
  int64_t num_bands, k_block, num_k_blocks;

  // Stretching: the offset of filter row r / filter column s within a
  // channel's planes, and, for filters of few enough columns, the offset
  // of every column (else columns are decoded one by one).
  const int32_t* row_offsets;
  const int32_t* column_indices;
  int64_t C, S;
  std::vector<int64_t> r_offset, s_offset;
  std::unique_ptr<std::ptrdiff_t[]> column_offsets;
  // Stretched offset of each nonzero, filled per block of output channels
  // by the first unit that needs it (see PrepareOffsets), and with
  // input-channel blocks (below) the values in the same order: one
  // allocation, since a second large one per call measured page faults on
  // every call (the allocator returns it to the system). Not a vector:
  // zeroing it first would cost as much as filling it.
  std::unique_ptr<unsigned char[]> filter_storage;
  std::ptrdiff_t* offsets;
  float* blocked_values;
  std::unique_ptr<std::atomic<int>[]> offsets_state;  // per channel block

  // Input-channel blocks (num_channel_blocks > 1, else off): offsets and
  // blocked_values hold each row's nonzeros reordered by block of
  // channel_block input channels, then by column as before; block b of row
  // k is [block_starts[k * (nb + 1) + b], block_starts[k * (nb + 1) + b + 1]).
  // column_segment[j] numbers column j's (tap, block) pair in row order.
  int64_t channel_block, num_channel_blocks;
  std::unique_ptr<int32_t[]> column_segment;
  std::unique_ptr<int32_t[]> block_starts;
};

// The line of a band of `rows` output rows: its positions, its vectors, and
// the near-equal register-block chunks RunUnits splits them into (rather
// than full blocks plus a thin remainder).
struct LineSplit {
  int64_t length, vectors, chunks;
};
LineSplit SplitLine(const ConvGeometry& g, const Plan& plan, int64_t rows) {
  const int64_t length = (rows - 1) * plan.row_pitch + g.Q;
  const int64_t vectors = CeilDiv(length, plan.kernel.lanes);
  return {length, vectors, CeilDiv(vectors, plan.kernel.max_vectors)};
}

// Input channels per block (see kChannelBlockBytes), or C for no blocks.
int64_t ChannelBlock(const ConvGeometry& g, const Plan& plan, int64_t nnz) {
  const int64_t sweeps =
      g.N * plan.num_bands * SplitLine(g, plan, plan.band_rows).chunks;
  if (sweeps < kMinSweepsForChannelBlocks || nnz == 0) return g.C;
  // The floats of one channel a chunk reads in each stride-phase plane: its
  // positions shifted by each tap, one span, or one piece per row shift
  // when rows are longer than the chunk.
  const int64_t planes = static_cast<int64_t>(plan.row_phases.size() *
                                              plan.column_phases.size());
  const int64_t row_halo = plan.buffer_rows - plan.band_rows;
  const int64_t chunk_and_column_halo =
      int64_t{plan.kernel.max_vectors} * plan.kernel.lanes +
      (g.S - 1) * g.dilation_w / g.stride_w;
  const int64_t chunk_floats =
      std::min(chunk_and_column_halo + row_halo * plan.row_pitch,
               chunk_and_column_halo * (row_halo + 1));
  const int64_t fit = kChannelBlockBytes /
                      (planes * chunk_floats * int64_t{sizeof(float)});
  const int64_t long_enough = CeilDiv(kMinBlockNonzeros * g.K * g.C, nnz);
  if (fit < long_enough) return g.C;
  const int64_t blocks = CeilDiv(g.C, fit);
  return blocks < 2 ? g.C : CeilDiv(g.C, blocks);
}

Plan MakePlan(const ConvGeometry& g, const int32_t* row_offsets,
              const int32_t* column_indices, CpuKernels kernel) {
  Plan plan;
  plan.kernel = kernel;
  plan.row_phases = UsedPhases(g.R, g.dilation_h, g.stride_h);
  plan.column_phases = UsedPhases(g.S, g.dilation_w, g.stride_w);
  const int64_t row_halo = (g.R - 1) * g.dilation_h / g.stride_h;
  plan.row_pitch = g.Q + (g.S - 1) * g.dilation_w / g.stride_w;
  const int64_t planes_per_channel = static_cast<int64_t>(
      plan.row_phases.size() * plan.column_phases.size());
  const int64_t planes_per_row = g.C * planes_per_channel;
  const int64_t bytes_per_row =
      planes_per_row * plan.row_pitch * static_cast<int64_t>(sizeof(float));
  plan.band_rows = std::clamp<int64_t>(
      kBandBufferBytes / bytes_per_row - row_halo, 1, g.P);
  plan.num_bands = CeilDiv(g.P, plan.band_rows);
  plan.band_rows = CeilDiv(g.P, plan.num_bands);  // even bands
  plan.buffer_rows = plan.band_rows + row_halo;
  plan.plane = plan.buffer_rows * plan.row_pitch;
  // The gap after each channel takes what the NHWC fill's transpose writes
  // past a row's end (see FillBand). A line's last vector may start at its
  // last position and read lanes - 1 past the last plane.
  plan.channel_stride =
      planes_per_channel * plan.plane + kTransposeOverhang;
  plan.buffer_floats = g.C * plan.channel_stride + kernel.lanes;

  const int64_t nnz = row_offsets[g.K];
  const int64_t bands_total = g.N * plan.num_bands;
  const int64_t splits = std::clamp<int64_t>(
      CeilDiv(kMinUnits, bands_total), 1, CeilDiv(g.K, kTileChannels));
  const int64_t bytes_per_channel = std::max<int64_t>(
      1, nnz * static_cast<int64_t>(sizeof(std::ptrdiff_t) + sizeof(float)) /
             g.K);
  const int64_t k_block_cap = std::max<int64_t>(
      1, kFilterBlockBytes / bytes_per_channel / kTileChannels);
  plan.k_block =
      std::min(CeilDiv(CeilDiv(g.K, splits), kTileChannels), k_block_cap) *
      kTileChannels;
  plan.num_k_blocks = CeilDiv(g.K, plan.k_block);

  // r_offset / s_offset: the plane of the tap's stride phase plus its shift
  // inside the plane; a nonzero's stretched offset adds c * channel_stride.
  plan.row_offsets = row_offsets;
  plan.column_indices = column_indices;
  plan.C = g.C;
  plan.S = g.S;
  plan.r_offset.resize(g.R);
  plan.s_offset.resize(g.S);
  const int64_t num_column_phases =
      static_cast<int64_t>(plan.column_phases.size());
  for (int64_t r = 0; r < g.R; ++r) {
    const int64_t shift = r * g.dilation_h;
    plan.r_offset[r] =
        PhaseIndex(plan.row_phases, shift % g.stride_h) * num_column_phases *
            plan.plane +
        shift / g.stride_h * plan.row_pitch;
  }
  for (int64_t s = 0; s < g.S; ++s) {
    const int64_t shift = s * g.dilation_w;
    plan.s_offset[s] = PhaseIndex(plan.column_phases, shift % g.stride_w) *
                           plan.plane +
                       shift / g.stride_w;
  }
  const int64_t columns = g.FilterColumns();
  if (columns <= 2 * nnz + 4096) {
    // The usual case: a table, so that a nonzero costs a lookup, not two
    // divisions.
    plan.column_offsets.reset(new std::ptrdiff_t[columns]);
    for (int64_t r = 0, j = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        for (int64_t c = 0; c < g.C; ++c, ++j) {
          plan.column_offsets[j] = c * plan.channel_stride + plan.r_offset[r] +
                                   plan.s_offset[s];
        }
      }
    }
  }
  plan.channel_block =
      plan.column_offsets != nullptr ? ChannelBlock(g, plan, nnz) : g.C;
  plan.num_channel_blocks = CeilDiv(g.C, plan.channel_block);
  if (plan.num_channel_blocks > 1) {
    const int64_t nb = plan.num_channel_blocks;
    plan.column_segment.reset(new int32_t[columns]);
    for (int64_t tap = 0, j = 0; tap < g.R * g.S; ++tap) {
      for (int64_t c = 0; c < g.C; ++c, ++j) {
        plan.column_segment[j] =
            static_cast<int32_t>(tap * nb + c / plan.channel_block);
      }
    }
    plan.block_starts.reset(new int32_t[g.K * (nb + 1)]);
  }
  const int64_t blocked_value_bytes =
      plan.num_channel_blocks > 1 ? nnz * int64_t{sizeof(float)} : 0;
  plan.filter_storage.reset(new unsigned char[
      nnz * int64_t{sizeof(std::ptrdiff_t)} + blocked_value_bytes]);
  plan.offsets = reinterpret_cast<std::ptrdiff_t*>(plan.filter_storage.get());
  plan.blocked_values = reinterpret_cast<float*>(plan.offsets + nnz);
  plan.offsets_state.reset(new std::atomic<int>[plan.num_k_blocks]);
  for (int64_t b = 0; b < plan.num_k_blocks; ++b) plan.offsets_state[b] = 0;
  return plan;
}

// Stretches the offsets of rows [k_begin, k_end) into the order of
// input-channel blocks, and copies their values into that order. Within a
// row, segments (tap, block) are ascending in column order, so one pass
// finds where each starts, and each nonzero's new place is its index plus
// its segment's shift: no sort, no per-bucket counters.
// Not inlined: inside RunUnits its pointers were spilled, and the scatter
// stores stalled the reloads (perf: 2-3x the cost of this loop alone).
__attribute__((noinline)) void BlockRows(const Plan& plan,
                                         const float* values, int64_t k_begin,
                                         int64_t k_end) {
  const int64_t nb = plan.num_channel_blocks;
  const int64_t taps = static_cast<int64_t>(plan.r_offset.size()) * plan.S;
  const int64_t segments = taps * nb;
  std::vector<int32_t> first_storage(segments + 1), shift_storage(segments);
  // Locals, restrict-qualified: the scatter's stores would otherwise make
  // the compiler reload every pointer after each one.
  int32_t* __restrict first = first_storage.data();
  int32_t* __restrict shift = shift_storage.data();
  const int32_t* __restrict columns = plan.column_indices;
  const int32_t* __restrict segment_of = plan.column_segment.get();
  const std::ptrdiff_t* __restrict column_offsets = plan.column_offsets.get();
  std::ptrdiff_t* __restrict offsets = plan.offsets;
  float* __restrict blocked_values = plan.blocked_values;
  for (int64_t k = k_begin; k < k_end; ++k) {
    const int32_t begin = plan.row_offsets[k], end = plan.row_offsets[k + 1];
    std::fill(first, first + segments + 1, end);
    for (int32_t i = end - 1; i >= begin; --i) {
      first[segment_of[columns[i]]] = i;
    }
    for (int64_t seg = segments - 1; seg >= 0; --seg) {
      first[seg] = std::min(first[seg], first[seg + 1]);  // empty segments
    }
    int32_t* block_starts = plan.block_starts.get() + k * (nb + 1);
    int32_t place = begin;
    for (int64_t b = 0; b < nb; ++b) {
      block_starts[b] = place;
      for (int64_t seg = b; seg < segments; seg += nb) {
        shift[seg] = place - first[seg];
        place += first[seg + 1] - first[seg];
      }
    }
    block_starts[nb] = end;
    for (int32_t i = begin; i < end; ++i) {
      const int32_t column = columns[i];
      const int32_t to = i + shift[segment_of[column]];
      offsets[to] = column_offsets[column];
      blocked_values[to] = values[i];
    }
  }
}

// Stretches the offsets of channel block `block` on first use, so that this
// O(nnz) step runs inside the ParallelFor instead of before it. Any thread
// may do it (the result is the same); others needing the block wait.
void PrepareOffsets(const Plan& plan, const float* values, int64_t block,
                    int64_t K) {
  enum : int { kTodo = 0, kBusy = 1, kReady = 2 };
  std::atomic<int>& state = plan.offsets_state[block];
  if (state.load(std::memory_order_acquire) == kReady) return;
  int expected = kTodo;
  if (!state.compare_exchange_strong(expected, kBusy,
                                     std::memory_order_acquire)) {
    while (state.load(std::memory_order_acquire) != kReady) {
      std::this_thread::yield();
    }
    return;
  }
  const int64_t k_begin = block * plan.k_block;
  const int64_t k_end = std::min(K, k_begin + plan.k_block);
  const int64_t begin = plan.row_offsets[k_begin];
  const int64_t end = plan.row_offsets[k_end];
  if (plan.num_channel_blocks > 1) {
    BlockRows(plan, values, k_begin, k_end);
  } else if (plan.column_offsets != nullptr) {
    for (int64_t i = begin; i < end; ++i) {
      plan.offsets[i] = plan.column_offsets[plan.column_indices[i]];
    }
  } else {
    // Huge, very sparse filters: decode each column (32-bit divisions).
    const uint32_t C = static_cast<uint32_t>(plan.C);
    const uint32_t S = static_cast<uint32_t>(plan.S);
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t column = static_cast<uint32_t>(plan.column_indices[i]);
      const uint32_t tap = column / C;
      const uint32_t r = tap / S;
      plan.offsets[i] = (column - tap * C) * plan.channel_stride +
                        plan.r_offset[r] + plan.s_offset[tap - r * S];
    }
  }
  state.store(kReady, std::memory_order_release);
}

// Zeroes the kTransposeOverhang floats at `span`. Like the transpose's
// overhang, the part past a row's end lands in a row written after it or in
// the channel's gap.
void ZeroOverhangSpan(float* span) {
  std::memset(span, 0, kTransposeOverhang * sizeof(float));
}

// Fills the band buffer of image n, band starting at output row p0: every
// float of every plane, data or zero padding.
void FillBand(const ConvGeometry& g, const Plan& plan, const float* input,
              int64_t n, int64_t p0, float* buffer) {
  const bool nhwc = g.data_format == DataFormat::kNHWC;
  const int64_t num_row_phases = static_cast<int64_t>(plan.row_phases.size());
  const int64_t num_column_phases =
      static_cast<int64_t>(plan.column_phases.size());
  const int64_t channel_stride = plan.channel_stride;
  // Rows are written in memory order within each channel, so the
  // transpose's overhang past a row's end (up to kTransposeOverhang floats)
  // lands in a row written after it, or in the channel's gap.
  for (int64_t a = 0; a < num_row_phases; ++a) {
    for (int64_t b = 0; b < num_column_phases; ++b) {
      // Columns x whose input column w = x * stride_w + phase - pad_left
      // lies in [0, W).
      const int64_t first_w = plan.column_phases[b] - g.pad_left;
      const int64_t x_begin =
          std::min(first_w >= 0 ? 0 : CeilDiv(-first_w, g.stride_w),
                   plan.row_pitch);
      const int64_t x_end = std::max(
          x_begin,
          std::min(g.W - 1 - first_w >= 0
                       ? (g.W - 1 - first_w) / g.stride_w + 1
                       : 0,
                   plan.row_pitch));
      // The usual padding is a column or two per side: then one fixed-size
      // zero store per side and channel, which compiles to two vector
      // stores, instead of two calls to memset per row and channel (which
      // cost as much as the transpose on small images). The left store runs
      // before the data is written over its tail, the right one after the
      // transpose's overhang, which it covers.
      const bool short_pads = x_begin <= kTransposeOverhang &&
                              plan.row_pitch - x_end <= kTransposeOverhang;
      for (int64_t y = 0; y < plan.buffer_rows; ++y) {
        float* row = buffer + (a * num_column_phases + b) * plan.plane +
                     y * plan.row_pitch;
        const int64_t h =
            (p0 + y) * g.stride_h + plan.row_phases[a] - g.pad_top;
        if (h < 0 || h >= g.H || x_begin >= x_end) {
          for (int64_t c = 0; c < g.C; ++c) {
            float* dst = row + c * channel_stride;
            std::fill(dst, dst + plan.row_pitch, 0.0f);
          }
          continue;
        }
        if (short_pads && x_begin > 0) {
          for (int64_t c = 0; c < g.C; ++c) {
            ZeroOverhangSpan(row + c * channel_stride);
          }
        }
        if (nhwc) {
          // Pixels x_begin.. of this phase are stride_w * C floats apart.
          const float* src =
              input + ((n * g.H + h) * g.W + x_begin * g.stride_w + first_w) *
                          g.C;
          plan.kernel.transpose(src, g.stride_w * g.C, row + x_begin,
                                channel_stride, x_end - x_begin, g.C,
                                /*dst_overhang=*/true);
        }
        for (int64_t c = 0; c < g.C; ++c) {
          float* dst = row + c * channel_stride;
          if (!nhwc) {
            const float* src = input + ((n * g.C + c) * g.H + h) * g.W;
            for (int64_t x = x_begin; x < x_end; ++x) {
              dst[x] = src[x * g.stride_w + first_w];
            }
          }
          if (!short_pads) {
            std::fill(dst, dst + x_begin, 0.0f);
            std::fill(dst + x_end, dst + plan.row_pitch, 0.0f);
          } else if (x_end < plan.row_pitch) {
            ZeroOverhangSpan(dst + x_end);
          }
        }
      }
    }
  }
}

// Stores the output pixels among tile columns [0, m_end - m_begin) (line
// positions [m_begin, m_end) of the band starting at output row p0) for
// channels [k_begin, k_end).
void StoreTile(const ConvGeometry& g, const Plan& plan, const float* tile,
               int64_t tile_pitch, int64_t n, int64_t p0, int64_t m_begin,
               int64_t m_end, int64_t k_begin, int64_t k_end, float* output) {
  const bool nhwc = g.data_format == DataFormat::kNHWC;
  for (int64_t pl = m_begin / plan.row_pitch; pl * plan.row_pitch < m_end;
       ++pl) {
    const int64_t row_start = pl * plan.row_pitch;
    const int64_t q_begin = std::max<int64_t>(0, m_begin - row_start);
    const int64_t q_end = std::min(g.Q, m_end - row_start);
    if (q_begin >= q_end) continue;  // only columns past the output width
    const int64_t p = p0 + pl;
    // Tile column of output pixel (p, q_begin).
    const float* src = tile + (row_start + q_begin - m_begin);
    if (nhwc) {
      plan.kernel.transpose(src, tile_pitch,
                            output + ((n * g.P + p) * g.Q + q_begin) * g.K +
                                k_begin,
                            g.K, k_end - k_begin, q_end - q_begin,
                            /*dst_overhang=*/false);
    } else {
      for (int64_t k = k_begin; k < k_end; ++k) {
        std::memcpy(output + ((n * g.K + k) * g.P + p) * g.Q + q_begin,
                    src + (k - k_begin) * tile_pitch,
                    (q_end - q_begin) * sizeof(float));
      }
    }
  }
}

void RunUnits(const ConvGeometry& g, const Plan& plan, const float* input,
              const int32_t* row_offsets, const float* values,
              const float* bias, Activation activation, float* output,
              int64_t unit_begin, int64_t unit_end) {
  const int lanes = plan.kernel.lanes;
  const int64_t nb = plan.num_channel_blocks;
  // Without blocks, each row is one range of the filter as given.
  const float* chunk_values = nb > 1 ? plan.blocked_values : values;
  const int32_t* starts = nb > 1 ? plan.block_starts.get() : row_offsets;
  const int64_t starts_stride = nb > 1 ? nb + 1 : 1;
  const int64_t tile_pitch = int64_t{plan.kernel.max_vectors} * lanes;
  // Uninitialised: FillBand writes every plane; only the gaps and the slack,
  // which feed lanes that are dropped, are zeroed here, so that no lane
  // ever computes on garbage (a denormal would be slow).
  std::unique_ptr<float[]> buffer(new float[plan.buffer_floats]);
  for (int64_t c = 1; c <= g.C; ++c) {
    std::fill(buffer.get() + c * plan.channel_stride - kTransposeOverhang,
              buffer.get() + c * plan.channel_stride, 0.0f);
  }
  std::fill(buffer.get() + plan.buffer_floats - plan.kernel.lanes,
            buffer.get() + plan.buffer_floats, 0.0f);
  // The kernel writes every tile column that StoreTile reads.
  std::unique_ptr<float[]> tile(new float[kTileChannels * tile_pitch]);
  int64_t filled = -1;  // n * num_bands + band now in the buffer
  for (int64_t unit = unit_begin; unit < unit_end; ++unit) {
    const int64_t image_band = unit / plan.num_k_blocks;
    const int64_t n = image_band / plan.num_bands;
    const int64_t p0 = image_band % plan.num_bands * plan.band_rows;
    if (image_band != filled) {
      FillBand(g, plan, input, n, p0, buffer.get());
      filled = image_band;
    }
    const int64_t block = unit % plan.num_k_blocks;
    PrepareOffsets(plan, values, block, g.K);
    const int64_t k_begin = block * plan.k_block;
    const int64_t k_end = std::min(g.K, k_begin + plan.k_block);
    const LineSplit line =
        SplitLine(g, plan, std::min(plan.band_rows, g.P - p0));
    for (int64_t chunk = 0; chunk < line.chunks; ++chunk) {
      const int64_t v_begin = line.vectors * chunk / line.chunks;
      const int64_t v_end = line.vectors * (chunk + 1) / line.chunks;
      const int64_t m_begin = v_begin * lanes;
      const int64_t m_end = std::min(line.length, v_end * lanes);
      for (int64_t k = k_begin; k < k_end; k += kTileChannels) {
        const int64_t k_stop = std::min(k_end, k + kTileChannels);
        // One call per input-channel block (one in all without blocks),
        // bias and activation once, after the last.
        for (int64_t b = 0; b < nb; ++b) {
          const bool last = b == nb - 1;
          plan.kernel.chunk(buffer.get() + m_begin, plan.offsets,
                            chunk_values, starts + b, starts_stride, b > 0,
                            last ? bias : nullptr,
                            last ? activation : Activation::kNone, k, k_stop,
                            static_cast<int>(v_end - v_begin), tile.get(),
                            tile_pitch);
        }
        StoreTile(g, plan, tile.get(), tile_pitch, n, p0, m_begin, m_end, k,
                  k_stop, output);
      }
    }
  }
}

// The fallback for geometries too sparse in space for a band buffer: one
// output row (n, p) per unit, each output one ascending-column chain. Taps
// in the padding multiply a zero, as the band buffer's padding does, so a
// non-finite weight gives the same result on both paths. Slow, but needs no
// scratch memory.
void DirectRows(const ConvGeometry& g, const float* input,
                const int32_t* row_offsets, const int32_t* column_indices,
                const float* values, const float* bias, Activation activation,
                float* output, int64_t unit_begin, int64_t unit_end) {
  const bool nhwc = g.data_format == DataFormat::kNHWC;
  for (int64_t unit = unit_begin; unit < unit_end; ++unit) {
    const int64_t n = unit / g.P, p = unit % g.P;
    for (int64_t k = 0; k < g.K; ++k) {
      for (int64_t q = 0; q < g.Q; ++q) {
        float sum = 0.0f;
        for (int32_t i = row_offsets[k]; i < row_offsets[k + 1]; ++i) {
          const int64_t tap = column_indices[i] / g.C;
          const int64_t c = column_indices[i] - tap * g.C;
          const int64_t h = p * g.stride_h + tap / g.S * g.dilation_h - g.pad_top;
          const int64_t w = q * g.stride_w + tap % g.S * g.dilation_w - g.pad_left;
          const bool inside = h >= 0 && h < g.H && w >= 0 && w < g.W;
          sum += values[i] *
                 (inside ? input[nhwc ? ((n * g.H + h) * g.W + w) * g.C + c
                                      : ((n * g.C + c) * g.H + h) * g.W + w]
                         : 0.0f);
        }
        if (bias != nullptr) sum += bias[k];
        sum = Activate(sum, activation);
        output[nhwc ? ((n * g.P + p) * g.Q + q) * g.K + k
                    : ((n * g.K + k) * g.P + p) * g.Q + q] = sum;
      }
    }
  }
}

CpuKernels KernelsFor(CpuIsa isa) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == CpuIsa::kAvx512) return Avx512Kernels();
  if (isa == CpuIsa::kAvx2) return Avx2Kernels();
#endif
  (void)isa;
  return ScalarKernels();
}

}  // namespace

bool CpuSupportsIsa(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar:
      return true;
#if defined(__x86_64__) || defined(__i386__)
    // __builtin_cpu_supports also checks that the OS saves the wide
    // registers (XCR0), not just CPUID.
    case CpuIsa::kAvx2:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CpuIsa::kAvx512:  // its transposes are the AVX2 ones
      return CpuSupportsIsa(CpuIsa::kAvx2) &&
             __builtin_cpu_supports("avx512f");
#else
    default:
      return false;
#endif
  }
  return false;
}

CpuIsa SelectedCpuIsa() {
  static const CpuIsa selected = [] {
    const char* name = std::getenv("ESCORT_CPU_ISA");
    for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
      if (name != nullptr && std::strcmp(name, CpuIsaName(isa)) == 0 &&
          CpuSupportsIsa(isa)) {
        return isa;
      }
    }
#if defined(__x86_64__) || defined(__i386__)
    // AMD's AVX-512 (Zen 4) runs each 512-bit op as two 256-bit halves, and
    // the kernel's unaligned 64-byte loads always split cache lines: AVX2
    // measured 5-20% faster there.
    if (CpuSupportsIsa(CpuIsa::kAvx512) && !__builtin_cpu_is("amd")) {
      return CpuIsa::kAvx512;
    }
#endif
    return CpuSupportsIsa(CpuIsa::kAvx2) ? CpuIsa::kAvx2 : CpuIsa::kScalar;
  }();
  return selected;
}

const char* CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return "scalar";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
  }
  return "unknown";
}

void CsrConv2DCpuWithIsa(CpuIsa isa, const ConvGeometry& g, const float* input,
                         const int32_t* row_offsets,
                         const int32_t* column_indices, const float* values,
                         const float* bias, Activation activation,
                         float* output, const ParallelFor& parallel_for) {
  if (g.N == 0 || g.P == 0 || g.Q == 0 || g.K == 0) return;
  const Plan plan = MakePlan(g, row_offsets, column_indices, KernelsFor(isa));
  const int64_t nnz = row_offsets[g.K];
  if (plan.buffer_floats > kMaxBandBufferBytes / int64_t{sizeof(float)}) {
    auto direct = [&](int64_t begin, int64_t end) {
      DirectRows(g, input, row_offsets, column_indices, values, bias,
                 activation, output, begin, end);
    };
    if (parallel_for) {
      parallel_for(g.N * g.P, nnz * g.Q * 4 + g.K * g.Q + 100, direct);
    } else {
      direct(0, g.N * g.P);
    }
    return;
  }
  const int64_t units = g.N * plan.num_bands * plan.num_k_blocks;
  auto work = [&](int64_t begin, int64_t end) {
    RunUnits(g, plan, input, row_offsets, values, bias, activation, output,
             begin, end);
  };
  if (!parallel_for) {
    work(0, units);
    return;
  }
  // Rough cycles per unit: its FMAs (a few per vector of positions and
  // nonzero) plus filling its band, shared by the band's channel blocks.
  const int64_t positions = plan.band_rows * plan.row_pitch;
  const int64_t cost = nnz / plan.num_k_blocks * positions / 8 +
                       plan.buffer_floats / plan.num_k_blocks + 1000;
  parallel_for(units, cost, work);
}

int64_t CpuInputChannelBlocks(CpuIsa isa, const ConvGeometry& g,
                              const int32_t* row_offsets,
                              const int32_t* column_indices) {
  return MakePlan(g, row_offsets, column_indices, KernelsFor(isa))
      .num_channel_blocks;
}

}  // namespace internal

void CsrConv2DCpu(const ConvGeometry& geometry, const float* input,
                  const int32_t* row_offsets, const int32_t* column_indices,
                  const float* values, const float* bias,
                  Activation activation, float* output,
                  const ParallelFor& parallel_for) {
  internal::CsrConv2DCpuWithIsa(internal::SelectedCpuIsa(), geometry, input,
                                row_offsets, column_indices, values, bias,
                                activation, output, parallel_for);
}

}  // namespace escort
