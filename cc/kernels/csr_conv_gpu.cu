// CUDA direct sparse convolution from a CSR filter (Escort), fp32.
//
// Why this shape: with unstructured 70-98% sparse filters every output
// channel has its own nonzero pattern, so an input value fetched into a
// register is rarely reused by a second FMA. Each useful FMA needs one
// shared-memory load, and the shared pipe (one 32-lane load per cycle per
// SM, against four 32-lane FMAs) is the structural ceiling: 16.7 TFLOP/s of
// useful work on an H100. Everything else is kept off the hot loop:
//   * A block owns `warps * KW` output channels and a tile of
//     images x tile_h x tile_w output pixels. Per chunk of input channels it
//     stages the input tile with its halo into shared memory as
//     [c][y][x][image] (zero-filled outside the image: implicit padding,
//     any stride and dilation), double-buffered with cp.async. At batch 1
//     one chunk usually holds every channel: one buffer, no chunk
//     pipeline, and a preload without bucketing.
//   * A warp walks the nonzeros of one output channel whose input channel
//     lies in the chunk. Every lane holds PT (image, pixel) slots of that
//     channel in registers, so each nonzero is one broadcast shared load of
//     (byte offset, weight), then PT loads + PT FMAs per lane. Images are
//     the fastest dimension (batch 32: one image per lane), so the 32 lanes
//     read consecutive words for any stride. On the row-slot path (PC > 1,
//     stride_w 1) a lane's slots sit 128 bytes apart and share one address
//     register through load immediates.
//   * The CSR arrays are used as given. When the block's rows fit, they are
//     bucketed once by chunk into shared memory (coalesced reads, column j
//     decoded into the byte offset of its tap and channel); otherwise each
//     (channel, chunk) list is found per tap from cursors, one lane per tap
//     (columns are ordered (r, s, c), so a tap's columns in a chunk are a
//     contiguous run).
//   * Results go through shared memory so that global stores are coalesced
//     in either data format; bias and ReLU/ReLU6 are applied there.
//   * Row parts (batch 1): `parts` warps share each output channel, each
//     running a contiguous piece of its CSR row over the same staged tile,
//     so a block has parts x more warps and each warp a parts x shorter
//     chain (bucketing, staging share, hot loop) without more blocks, halo
//     or staging; the partial tiles are added in shared memory in the
//     epilogue.
//   * Split over input channels (sm_90 thread-block clusters): when a grid
//     has too few blocks to hide latency (batch 1), `split` blocks of one
//     cluster share a tile, each running a contiguous range of the chunks;
//     they add their partial tiles through distributed shared memory in a
//     fixed rank order before the epilogue. Still one launch, no workspace,
//     no atomics, deterministic.
// The tile is chosen by a cost model fitted to H100 measurements, its
// bank-conflict weight to H200 ones (csr_conv_gpu_plan.cc;
// benchmarks/gpu/NOTES.md has the data). This file holds the kernel and the
// launcher, which plans each geometry once per process (PlanCache).
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <list>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "cc/kernels/csr_conv_gpu.h"
#include "cc/kernels/csr_conv_gpu_plan.h"

namespace escort {
namespace {

using gpu_plan::ConfigValid;
using gpu_plan::KernelInstanceIndex;
using gpu_plan::kListChannels;
using gpu_plan::kMaxSmemBytes;
using gpu_plan::kNumKernelInstances;
using gpu_plan::Layout;
using gpu_plan::Log2;
using gpu_plan::MakeLayout;
using gpu_plan::MaxThreads;
using gpu_plan::StageChannelLanes;
using gpu_plan::StageChannelsPerThread;

// n / d for 0 <= n < 2^31 as a multiply-high and a shift (see Divide).
struct FastDivisor {
  unsigned magic;
  int shift;
};

struct Params {
  const float* input;
  const int32_t* row_offsets;
  const int32_t* column_indices;
  const float* values;
  const float* bias;
  float* output;
  int N, H, W, C, K, R, S, P, Q;
  // The kernel's divisors (see Divide): C (filter columns, per nonzero in
  // the preload), S, tiw, tw (tap and pixel tables), split, k_groups,
  // tiles_q, tiles_p (block index).
  FastDivisor div_c, div_s, div_tiw, div_tw, div_split, div_kg, div_tq, div_tp;
  int stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left;
  int nhwc, activation;
  // Tile.
  int nb, log_nb, th, tw, tih, tiw, cc, log_cc, log_kb;
  int nbti;        // nb * tih * tiw: staged (image, pixel) positions.
  int chan_pitch;  // floats between input channels of a staged tile (4 x odd).
  int tile_floats; // cc * chan_pitch.
  int slot_pitch;  // floats between channels of the output staging (odd).
  int tiles_p, tiles_q, k_groups;
  // NHWC staging of a full chunk (StageNhwc): 2^log_cl channel lanes,
  // stage_kc channels per thread and position, 2^log_nq channel blocks.
  int log_cl, stage_kc, log_nq;
  // Byte offsets of the shared-memory sections.
  int lists_off, cursors_off, tapoff_off, stab_off, otab_off;
  // Preloaded filter (0 capacity: off): the block's CSR rows bucketed by
  // chunk in shared memory, and each (row, chunk)'s start.
  int pool_cap, pool_off, starts_off, nch;
  // Blocks per cluster splitting the chunks (1: no split).
  int split;
  // Warps per output channel (row parts; warp = part * warps + channel
  // warp), and the floats between two parts' partial tiles.
  int log_warps, parts, log_parts, part_floats;
};

// cp.async exists from sm_80 on; sm_75 stages synchronously (the barrier
// after CpAsyncWait orders those stores just the same).
__device__ __forceinline__ void CpAsync4(float* dst, const float* src,
                                         bool valid) {
#if __CUDA_ARCH__ >= 800
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  const int src_size = valid ? 4 : 0;  // 0 bytes read: zero fill (padding).
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d),
               "l"(src), "r"(src_size));
#else
  *dst = valid ? __ldg(src) : 0.0f;
#endif
}
// cp.async of the float at `src` + kSrcBytes to the shared byte address
// `dst`, or 0 without reading anything where `g` < 0 (padding). The test
// on `g` and the immediate offset keep a group of copies at one
// instruction each; back-to-back copies also share the setup that sm_90
// issues before each group.
template <int kSrcBytes>
__device__ __forceinline__ void CpAsync4At(uint32_t dst, const float* src,
                                           int g) {
#if __CUDA_ARCH__ >= 800
  asm volatile(
      "{\n .reg .pred skip;\n setp.lt.s32 skip, %2, 0;\n"
      " cp.async.ca.shared.global [%0], [%1+%3], 4, skip;\n}\n" ::"r"(dst),
      "l"(src), "r"(g), "n"(kSrcBytes));
#else
  const float v = g >= 0 ? __ldg(src + kSrcBytes / 4) : 0.0f;
  asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(dst), "f"(v));
#endif
}
// base + words floats in one wide multiply-add (the compiler's own sum of
// a sign- and a zero-extended offset takes four instructions).
__device__ __forceinline__ const float* AddWords(const float* base,
                                                 unsigned words) {
  const float* r;
  asm("mad.wide.u32 %0, %1, 4, %2;\n" : "=l"(r) : "r"(words), "l"(base));
  return r;
}
// n / d for 0 <= n < 2^31 in three instructions instead of the ~20 of an
// integer division (the preload divides each nonzero's column by C; a
// batch-1 block's prologue chains four divisions for its index and one per
// table entry). Round-up multiplier method (Granlund & Montgomery, as
// CUTLASS's FastDivmod); the divisor comes from MakeFastDivisor.
__device__ __forceinline__ int Divide(FastDivisor d, int n) {
  const unsigned u = static_cast<unsigned>(n);
  return static_cast<int>((__umulhi(u, d.magic) + u) >> d.shift);
}
// A 32-bit shared address plus an immediate keeps the hot loop at one add
// per row of slots.
template <int kOffset>
__device__ __forceinline__ float LoadShared(uint32_t addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1+%2];\n" : "=f"(v) : "r"(addr), "n"(kOffset));
  return v;
}
// x[i] = slot i of the current nonzero; compile-time offsets need the
// index as a template argument, hence the recursion.
template <int PT, int PC, int I = 0>
__device__ __forceinline__ void LoadSlots(float (&x)[PT],
                                          const uint32_t (&base)[PC > 1 ? PT / PC : PT],
                                          uint32_t offset) {
  if constexpr (I < PT) {
    x[I] = LoadShared<(PC > 1 ? (I % PC) * 128 : 0)>(
        base[PC > 1 ? I / PC : I] + offset);
    LoadSlots<PT, PC, I + 1>(x, base, offset);
  }
}
__device__ __forceinline__ void CpAsyncCommit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

// NHWC staging of the chunk at channel c0, stage_kc (1, 2 or 4) channels
// per thread and position. Channels at or past C (the last chunk when cc
// does not divide C) are left unwritten: no list entry refers to them. A warp covers
// 2^log_cl (8 when cc >= 8) consecutive channels x 32 / 2^log_cl
// positions: each copy instruction reads whole 32-byte sectors and, with
// chan_pitch 4 x odd, writes 32 distinct banks. A thread's channels are 8
// apart (an immediate offset in global memory), so one table read, one
// bounds test and one 64-bit address serve up to 4 copies: about 4.5
// instructions per copied float, against 22 for a loop of one float per
// iteration. (One loop for every stage_kc: separate instances of it raised
// the kernel's register count by 30.) The 2^log_nq channel blocks go to
// groups of warps; a chunk of more than 32 x warps channels (one chunk for
// the whole input at batch 1) has more blocks than warps, and each warp
// then takes several.
__device__ __forceinline__ void StageNhwc(const Params& p, uint32_t buf,
                                          const int* stab, int c0) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nw = blockDim.x >> 5, nq = 1 << p.log_nq;
  const int cl = 1 << p.log_cl;
  const int j = lane & (cl - 1);
  const int m_warp = 32 >> p.log_cl;
  const int m_step = max(nw >> p.log_nq, 1) * m_warp;
  const uint32_t d_stride = 4u * cl * p.chan_pitch;
  for (int q = warp & (nq - 1); q < nq; q += nw) {
    const int c = q * cl * p.stage_kc + j;  // first channel of this thread
    // This thread's channels that exist (they are cl apart).
    const int kc = min(p.stage_kc, (p.C - c0 - c + cl - 1) >> p.log_cl);
    if (kc <= 0) return;  // So are those of its later blocks.
    const float* src = p.input + (c0 + c);
    int m = (warp >> p.log_nq) * m_warp + (lane >> p.log_cl);
    uint32_t dst = buf + 4u * (c * p.chan_pitch + m);
#pragma unroll 1
    for (; m < p.nbti; m += m_step, dst += 4u * m_step) {
      const int g = stab[m];
      const float* s = AddWords(src, max(g, 0));
      CpAsync4At<0>(dst, s, g);
      if (kc > 1) CpAsync4At<32>(dst + d_stride, s, g);
      if (kc > 2) CpAsync4At<64>(dst + 2 * d_stride, s, g);
      if (kc > 3) CpAsync4At<96>(dst + 3 * d_stride, s, g);
    }
  }
}

// Copies input channels [c0, c0 + cc) of the block's tile into `buf`
// ([c][stab position]); positions and channels outside the input read 0.
__device__ __forceinline__ void StageChunk(const Params& p, float* buf,
                                           const int* stab, int c0) {
  const int tid = threadIdx.x, nthreads = blockDim.x;
  if (p.nhwc) {
    StageNhwc(p, static_cast<uint32_t>(__cvta_generic_to_shared(buf)), stab,
              c0);
  } else {
    // Position fastest: runs along w are contiguous in NCHW. Channels past
    // C are not staged (the buffer ends at C).
    const int hw = p.H * p.W;
    int c = tid / p.nbti, m = tid - c * p.nbti;
    const int total = min(p.cc, p.C - c0) * p.nbti;
    for (int e = tid; e < total; e += nthreads) {
      const int g = stab[m];
      const bool ok = g >= 0;
      CpAsync4(buf + c * p.chan_pitch + m,
               ok ? p.input + g + (c0 + c) * hw : p.input, ok);
      m += nthreads;
      while (m >= p.nbti) {
        m -= p.nbti;
        ++c;
      }
    }
  }
}

// Writes the nonzeros of one CSR row whose input channel lies in
// [c0, c0 + clen) to `list` as (byte offset into the staging region, with
// the current buffer's `buf_bytes` folded in, so that the hot loop forms
// each address with one add; weight), and advances the row's per-tap
// cursors: `cur[t]` is the first entry of tap t at or after channel c0.
// One lane per tap, four entries per lane and round: at 90% sparsity a tap
// has one or two entries per chunk, so a round or two covers the chunk,
// where a 32-wide window per tap would issue nine. Returns the count.
__device__ __forceinline__ int BuildList(const Params& p, int* cur,
                                         const int* tapoff, int2* list,
                                         int row_end, int c0, int clen,
                                         int buf_bytes, int lane) {
  constexpr int kU = 4;
  const int rs = p.R * p.S;
  const unsigned lanes_below = (1u << lane) - 1u;
  int n = 0;
  for (int t = lane; t - lane < rs; t += 32) {
    const bool active = t < rs;
    int next = active ? cur[t] : row_end;
    const int lo = t * p.C + c0;
    const int limit = lo + clen;
    const int toff = active ? tapoff[t] + buf_bytes : 0;
    while (true) {
      int col[kU];
      float val[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int idx = next + u;
        col[u] = INT_MAX;
        val[u] = 0.f;
        if (idx < row_end) {
          col[u] = __ldg(p.column_indices + idx);
          val[u] = __ldg(p.values + idx);
        }
      }
      // Columns ascend, so a lane's entries in range are a prefix of its
      // kU; place them after those of the lanes below it.
      unsigned ballot[kU];
      int pos = n, total = 0, mine = 0;
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const bool in = col[u] < limit;
        ballot[u] = __ballot_sync(0xffffffffu, in);
        pos += __popc(ballot[u] & lanes_below);
        total += __popc(ballot[u]);
        mine += in ? 1 : 0;
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (u < mine) {
          list[pos + u] = make_int2((col[u] - lo) * p.chan_pitch * 4 + toff,
                                    __float_as_int(val[u]));
        }
      }
      n += total;
      next += mine;
      if (ballot[kU - 1] == 0u) break;  // No lane filled all kU: done.
    }
    if (active) cur[t] = next;
  }
  return n;
}

// A lane's N CSR entries first, first + 32, ...: all loads issued before
// any is used, so a row costs one load latency per N rounds. Entries at or
// past `end` read as column 0, weight 0.
template <int N>
__device__ __forceinline__ void LoadEntries(const Params& p, int first,
                                            int end, int (&cols)[N],
                                            float (&vals)[N]) {
#pragma unroll
  for (int u = 0; u < N; ++u) {
    const int idx = first + u * 32;
    cols[u] = idx < end ? __ldg(p.column_indices + idx) : 0;
    vals[u] = idx < end ? __ldg(p.values + idx) : 0.f;
  }
}

// acc[i] += w * (slot i at the entry's offset) over a list's n entries.
// Unrolled 4 deep: at batch 1 a warp's chain waits on each entry's two
// dependent shared loads (entry, then slots), and four entries in flight
// hide more of that latency than two.
template <int PT, int PC>
__device__ __forceinline__ void RunList(float (&acc)[PT],
                                        const uint32_t (&base)[PC > 1 ? PT / PC : PT],
                                        const int2* list, int n) {
#pragma unroll 4
  for (int e = 0; e < n; ++e) {
    const int2 ow = list[e];
    const float w = __int_as_float(ow.y);
    float x[PT];  // All PT loads in flight before the first FMA.
    LoadSlots<PT, PC>(x, base, ow.x);
#pragma unroll
    for (int i = 0; i < PT; ++i) acc[i] = fmaf(w, x[i], acc[i]);
  }
}

// Output element `index` of the block's tile: the sum of its row parts'
// partials, and with a split of every cluster rank's, in a fixed order.
__device__ __forceinline__ float TileValue(const Params& p, float* ob,
                                           int index) {
  float v = 0.f;
#if __CUDA_ARCH__ >= 900
  if (p.split > 1) {
    cooperative_groups::cluster_group cluster =
        cooperative_groups::this_cluster();
    for (int q = 0; q < p.split; ++q) {
      const float* src = cluster.map_shared_rank(ob, q) + index;
      for (int part = 0; part < p.parts; ++part) v += src[part * p.part_floats];
    }
    return v;
  }
#endif
  for (int part = 0; part < p.parts; ++part) v += ob[index + part * p.part_floats];
  return v;
}

// Orders every rank's partial-tile writes before any rank reads them, and
// those reads before any rank exits (its shared memory would go with it).
__device__ __forceinline__ void ClusterSync(const Params& p) {
#if __CUDA_ARCH__ >= 900
  if (p.split > 1) cooperative_groups::this_cluster().sync();
#endif
}

template <int PT, int KW, int PC>
__global__ void __launch_bounds__(MaxThreads(PT, KW), 1)
    CsrConvKernel(const Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  float* region = reinterpret_cast<float*>(smem);
  int2* lists = reinterpret_cast<int2*>(smem + p.lists_off);
  int* cursors = reinterpret_cast<int*>(smem + p.cursors_off);
  int* tapoff = reinterpret_cast<int*>(smem + p.tapoff_off);
  int* stab = reinterpret_cast<int*>(smem + p.stab_off);
  int* otab = reinterpret_cast<int*>(smem + p.otab_off);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int nthreads = blockDim.x;
  // Channel warp (which KW output channels) and row part of this warp.
  const int cw = warp & ((1 << p.log_warps) - 1), part = warp >> p.log_warps;
  const int rs = p.R * p.S;
  const int nslots = p.nb * p.th * p.tw;
  const int tile_pixels = p.th * p.tw;

  // Block -> (cluster rank fastest: consecutive blocks form a cluster,
  // then k group, so blocks sharing an input tile run together and hit L2,
  // then q tile, p tile, image group).
  int bid = Divide(p.div_split, blockIdx.x);
  const int rank = blockIdx.x - bid * p.split;
  int next = Divide(p.div_kg, bid);
  const int kg = bid - next * p.k_groups;
  bid = next;
  next = Divide(p.div_tq, bid);
  const int tq = bid - next * p.tiles_q;
  bid = next;
  const int tn = Divide(p.div_tp, bid);
  const int tp = bid - tn * p.tiles_p;
  const int n0 = tn * p.nb, p0 = tp * p.th, q0 = tq * p.tw;
  const int kb = 1 << p.log_kb;
  const int k_warp = kg * kb + cw * KW;

  // Tables shared by every chunk.
  for (int t = tid; t < rs; t += nthreads) {
    const int r = Divide(p.div_s, t), s = t - r * p.S;
    tapoff[t] = ((r * p.dilation_h * p.tiw + s * p.dilation_w) << p.log_nb) * 4;
  }
  const int h0 = p0 * p.stride_h - p.pad_top;
  const int w0 = q0 * p.stride_w - p.pad_left;
  for (int m = tid; m < p.nbti; m += nthreads) {
    const int n = n0 + (m & (p.nb - 1));
    const int pix = m >> p.log_nb;
    const int y = Divide(p.div_tiw, pix), x = pix - y * p.tiw;
    const int h = h0 + y, w = w0 + x;
    int g = -1;
    if (n < p.N && h >= 0 && h < p.H && w >= 0 && w < p.W) {
      g = p.nhwc ? ((n * p.H + h) * p.W + w) * p.C
                 : (n * p.C * p.H + h) * p.W + w;
    }
    stab[m] = g;
  }
  for (int sl = tid; sl < nslots; sl += nthreads) {
    const int n = n0 + (sl & (p.nb - 1));
    const int pix = sl >> p.log_nb;
    const int py = Divide(p.div_tw, pix), px = pix - py * p.tw;
    const int op = p0 + py, oq = q0 + px;
    int o = -1;
    if (n < p.N && op < p.P && oq < p.Q) {
      o = p.nhwc ? ((n * p.P + op) * p.Q + oq) * p.K
                 : (n * p.K * p.P + op) * p.Q + oq;
    }
    otab[sl] = o;
  }

  // This block's chunks.
  const int ch_begin = Divide(p.div_split, rank * p.nch);
  const int ch_end = Divide(p.div_split, (rank + 1) * p.nch);

  // Preload: when the block's rows fit, bucket them once by input-channel
  // chunk into shared memory, already decoded (byte offset of the tap and
  // channel in the chunk's buffer, weight). Every chunk's list for every
  // row is then a contiguous run, with no per-chunk CSR reads at all.
  int2* pool = reinterpret_cast<int2*>(smem + p.pool_off);
  int* starts = reinterpret_cast<int*>(smem + p.starts_off);
  const int kb_first = min(kg * kb, p.K);
  const int kb_last = min(kg * kb + kb, p.K);
  const int block_base = __ldg(p.row_offsets + kb_first);
  const bool preload =
      p.pool_cap > 0 &&
      __ldg(p.row_offsets + kb_last) - block_base <= p.pool_cap;
  __syncthreads();  // tapoff ready.
  if (preload) {
    constexpr int kPre = 4;
    const unsigned lanes_below = (1u << lane) - 1u;
#pragma unroll
    for (int kk = 0; kk < KW; ++kk) {
      const int k = k_warp + kk;
      if (k >= p.K) break;
      const int row_b = __ldg(p.row_offsets + k);
      const int row_len = __ldg(p.row_offsets + k + 1) - row_b;
      // This warp's part of the row; parts are contiguous, so the pool
      // keeps the rows' layout and each part its own chunk starts.
      const int rb = row_b + ((part * row_len) >> p.log_parts);
      const int re = row_b + (((part + 1) * row_len) >> p.log_parts);
      int* st = starts + (warp * KW + kk) * (p.nch + 1);
      if (p.nch == 1) {
        // One chunk (the whole input staged at once): the entries keep
        // their row order, so one pass decodes them in place, without the
        // counting pass and the prefix over chunks.
        if (lane == 0) {
          st[0] = rb - block_base;
          st[1] = re - block_base;
        }
        for (int i0 = rb; i0 < re; i0 += 32 * kPre) {
          int cols[kPre];
          float vals[kPre];
          LoadEntries(p, i0 + lane, re, cols, vals);
#pragma unroll
          for (int u = 0; u < kPre; ++u) {
            const int idx = i0 + u * 32 + lane;
            if (idx < re) {
              const int t = Divide(p.div_c, cols[u]);
              pool[idx - block_base] =
                  make_int2((cols[u] - t * p.C) * p.chan_pitch * 4 + tapoff[t],
                            __float_as_int(vals[u]));
            }
          }
        }
        continue;
      }
      for (int h = lane; h <= p.nch; h += 32) st[h] = 0;
      __syncwarp();
      // Pass 1: entries per chunk. Each lane loads kPre entries before
      // using any, so a long row costs one load latency per kPre rounds.
      // Only this rank's chunks are counted (and stored in pass 2).
      for (int i0 = rb; i0 < re; i0 += 32 * kPre) {
        int cols[kPre];
#pragma unroll
        for (int u = 0; u < kPre; ++u) {
          const int idx = i0 + u * 32 + lane;
          cols[u] = idx < re ? __ldg(p.column_indices + idx) : 0;
        }
#pragma unroll
        for (int u = 0; u < kPre; ++u) {
          const int t = Divide(p.div_c, cols[u]);
          const int h = (cols[u] - t * p.C) >> p.log_cc;
          const bool ok = i0 + u * 32 + lane < re && h >= ch_begin && h < ch_end;
          const unsigned active = __ballot_sync(0xffffffffu, ok);
          if (ok) {
            const unsigned peers = __match_any_sync(active, h);
            if ((peers & lanes_below) == 0) st[h + 1] += __popc(peers);
          }
          __syncwarp();
        }
      }
      // Exclusive prefix over chunks (serial per lane 0: nch <= 64).
      if (lane == 0) {
        int run = rb - block_base;
        for (int h = 0; h <= p.nch; ++h) {
          run += st[h];
          st[h] = run;
        }
      }
      __syncwarp();
      // st[h] now holds the start of chunk h; use st[h] as the running
      // write position and restore it afterwards from the end of h - 1.
      for (int i0 = rb; i0 < re; i0 += 32 * kPre) {
        int cols[kPre];
        float vals[kPre];
        LoadEntries(p, i0 + lane, re, cols, vals);
#pragma unroll
        for (int u = 0; u < kPre; ++u) {
          const int t = Divide(p.div_c, cols[u]);
          const int c = cols[u] - t * p.C;
          const int h = c >> p.log_cc;
          const bool ok = i0 + u * 32 + lane < re && h >= ch_begin && h < ch_end;
          const unsigned active = __ballot_sync(0xffffffffu, ok);
          int pos = 0, n_peers = 0;
          bool leader = false;
          if (ok) {
            const unsigned peers = __match_any_sync(active, h);
            leader = (peers & lanes_below) == 0;
            n_peers = __popc(peers);
            pos = st[h] + __popc(peers & lanes_below);
          }
          __syncwarp();
          if (ok) {
            pool[pos] = make_int2(((c & (p.cc - 1)) * p.chan_pitch) * 4 + tapoff[t] +
                                      (h & 1) * p.tile_floats * 4,
                                  __float_as_int(vals[u]));
            if (leader) st[h] += n_peers;
          }
          __syncwarp();
        }
      }
      // Shift back: start of h = end of h - 1.
      int carry = rb - block_base;
      for (int h0 = 0; h0 <= p.nch; h0 += 32) {
        const int h = h0 + lane;
        const int v = h <= p.nch ? st[h] : 0;
        int prev = __shfl_up_sync(0xffffffffu, v, 1);
        if (lane == 0) prev = carry;
        carry = __shfl_sync(0xffffffffu, v, 31);
        __syncwarp();
        if (h <= p.nch) st[h] = prev;
        __syncwarp();
      }
    }
  }

  // Row bounds and the first entry of every tap at or after the block's
  // first chunk (binary search, one lane per tap).
  // Without the preload each row runs whole in its part-0 warp.
  int* my_cur = cursors + cw * KW * rs;
  int2* my_list = lists + cw * rs * min(min(p.cc, p.C), kListChannels);
  int row_end[KW];
#pragma unroll
  for (int kk = 0; kk < KW; ++kk) {
    const int k = k_warp + kk;
    int rb = 0, re = 0;
    if (k < p.K) {
      rb = __ldg(p.row_offsets + k);
      re = __ldg(p.row_offsets + k + 1);
    }
    row_end[kk] = re;
    for (int t = lane; t < rs && !preload && part == 0; t += 32) {
      const int key = t * p.C + ch_begin * p.cc;
      int lo = rb, hi = re;
      while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (__ldg(p.column_indices + mid) < key) lo = mid + 1; else hi = mid;
      }
      my_cur[kk * rs + t] = lo;
    }
  }

  // This lane's slots: image n_l of the tile, pixels g, g + G, g + 2G, ...
  const int n_l = lane & (p.nb - 1);
  const int g_l = lane >> p.log_nb;
  const int g_step = 32 >> p.log_nb;
  // Shared-memory byte addresses of the slots in the staging region.
  const uint32_t region_addr =
      static_cast<uint32_t>(__cvta_generic_to_shared(region));
  // PC == 1: one address per slot (any stride, any tile). PC > 1: the
  // lane's slots come in rows of PC pixels g_step apart with stride_w 1, so
  // neighbours sit exactly 32 words (128 bytes) apart whatever the image
  // count, and PC loads share one address register through immediates.
  constexpr int kBases = PC > 1 ? PT / PC : PT;
  uint32_t base[kBases];
#pragma unroll
  for (int b = 0; b < kBases; ++b) {
    int pix = PC > 1 ? g_l + b * p.tw : g_l + g_step * b;
    if (pix >= tile_pixels) pix = 0;  // Spare slot: computes, never stored.
    const int py = Divide(p.div_tw, pix), px = pix - py * p.tw;
    base[b] = region_addr +
              4u * (((py * p.stride_h * p.tiw + px * p.stride_w) << p.log_nb) +
                    n_l);
  }

  float acc[KW][PT];
#pragma unroll
  for (int kk = 0; kk < KW; ++kk)
#pragma unroll
    for (int i = 0; i < PT; ++i) acc[kk][i] = 0.f;

  __syncthreads();  // stab ready.
  // Buffers alternate by absolute chunk parity: the preloaded entries
  // carry the buffer of their chunk.
  if (ch_begin < ch_end) {
    StageChunk(p, region + (ch_begin & 1) * p.tile_floats, stab,
               ch_begin * p.cc);
  }
  CpAsyncCommit();
  for (int ch = ch_begin; ch < ch_end; ++ch) {
    const int c0 = ch * p.cc;
    const int clen = min(p.cc, p.C - c0);
    if (ch + 1 < ch_end) {
      StageChunk(p, region + ((ch + 1) & 1) * p.tile_floats, stab, c0 + p.cc);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    const int buf_bytes = (ch & 1) * p.tile_floats * 4;
#pragma unroll
    for (int kk = 0; kk < KW; ++kk) {
      if (k_warp + kk < p.K) {
        // Without the preload a list holds at most kListChannels channels
        // per tap: larger chunks are built and run in windows of channels.
        // Both paths share one inlined copy of the hot loop.
        int w0 = 0;
        do {
          const int2* list = my_list;
          int n = 0;
          if (preload) {
            const int* st = starts + (warp * KW + kk) * (p.nch + 1);
            list = pool + st[ch];
            n = st[ch + 1] - st[ch];
          } else if (part == 0) {
            n = BuildList(p, my_cur + kk * rs, tapoff, my_list, row_end[kk], c0 + w0,
                          min(kListChannels, clen - w0),
                          buf_bytes + w0 * p.chan_pitch * 4, lane);
            __syncwarp();
          }
          RunList<PT, PC>(acc[kk], base, list, n);
          __syncwarp();  // Before the next list overwrites this one.
          w0 += kListChannels;
        } while (!preload && part == 0 && w0 < clen);
      }
    }
    __syncthreads();  // Before the next stage overwrites this buffer.
  }

  // Epilogue: registers -> shared [part][channel][slot] -> coalesced stores
  // of the parts' sums.
  float* ob = region;
#pragma unroll
  for (int kk = 0; kk < KW; ++kk) {
#pragma unroll
    for (int i = 0; i < PT; ++i) {
      const int pix = g_l + g_step * i;
      if (pix < tile_pixels) {
        ob[part * p.part_floats + (cw * KW + kk) * p.slot_pitch +
           (pix << p.log_nb) + n_l] = acc[kk][i];
      }
    }
  }
  __syncthreads();
  ClusterSync(p);
  const int k_block = kg * kb;
  if (p.nhwc) {
    // Channel fastest: consecutive threads write consecutive channels. With
    // a split each rank stores its share of the tile.
    const int total = nslots << p.log_kb;
    const int e_end = Divide(p.div_split, (rank + 1) * total);
    for (int e = Divide(p.div_split, rank * total) + tid; e < e_end; e += nthreads) {
      const int kl = e & (kb - 1), sl = e >> p.log_kb;
      const int k = k_block + kl;
      const int o = otab[sl];
      if (o >= 0 && k < p.K) {
        float v = TileValue(p, ob, kl * p.slot_pitch + sl);
        if (p.bias != nullptr) v += __ldg(p.bias + k);
        if (p.activation == 1) v = fmaxf(v, 0.f);
        if (p.activation == 2) v = fminf(fmaxf(v, 0.f), 6.f);
        p.output[o + k] = v;
      }
    }
  } else {
    const int pq = p.P * p.Q;
    const int kl_end = Divide(p.div_split, (rank + 1) * kb);
    for (int kl = Divide(p.div_split, rank * kb) + warp; kl < kl_end;
         kl += nthreads >> 5) {
      const int k = k_block + kl;
      if (k >= p.K) break;
      const float b = p.bias != nullptr ? __ldg(p.bias + k) : 0.f;
      for (int sl = lane; sl < nslots; sl += 32) {
        const int o = otab[sl];
        if (o >= 0) {
          float v = TileValue(p, ob, kl * p.slot_pitch + sl) + b;
          if (p.activation == 1) v = fmaxf(v, 0.f);
          if (p.activation == 2) v = fminf(fmaxf(v, 0.f), 6.f);
          p.output[o + k * pq] = v;
        }
      }
    }
  }
  ClusterSync(p);
}

// The instances' kernels, in the order of gpu_plan::kKernelInstances.
#define ESCORT_KERNEL_POINTER(PT, KW, PC) \
  reinterpret_cast<const void*>(CsrConvKernel<PT, KW, PC>),
const void* const kKernels[] = {ESCORT_KERNEL_INSTANCES(ESCORT_KERNEL_POINTER)};
#undef ESCORT_KERNEL_POINTER
static_assert(sizeof(kKernels) / sizeof(kKernels[0]) == kNumKernelInstances,
              "one kernel per instance of the plan header");

// Multiplier and shift of Divide for a divisor d >= 1: shift =
// ceil(log2(d)), magic = 2^32 * (2^shift - d) / d + 1 (exact quotients for
// every numerator below 2^31).
FastDivisor MakeFastDivisor(int64_t d) {
  FastDivisor f;
  int s = 0;
  while ((int64_t{1} << s) < d) ++s;
  f.shift = s;
  f.magic = static_cast<unsigned>(((uint64_t{1} << 32) * ((uint64_t{1} << s) - d)) / d + 1);
  return f;
}

// What the launcher knows of one device. It does not change while the
// process runs, so it is asked once per device instead of on every call.
struct DeviceState {
  // The planner's view: SM count, cluster support, compiled registers.
  CsrConvGpuDeviceInfo info;
  // Opt-in dynamic shared memory per block, capped at kMaxSmemBytes: the
  // value each instance's MaxDynamicSharedMemorySize attribute is set to.
  int max_smem = 0;
  // Whether that attribute has been set for instance i on this device.
  bool smem_attribute_set[kNumKernelInstances] = {};
};

// DeviceState by device ordinal.
struct DeviceTable {
  std::mutex mu;
  std::map<int, DeviceState> states;
};
DeviceTable& Devices() {
  // Never destroyed: ops may still run while static objects are destroyed.
  static auto* table = new DeviceTable;
  return *table;
}

// Asks the device for what DeviceState holds. Clusters need an sm_90+
// device and a kernel image compiled for sm_90+: a PTX-only build for an
// older architecture JIT-compiled on sm_90 would drop the cluster
// reduction (see TileValue). Every instance comes from the same module, so
// one stands for all.
cudaError_t QueryDevice(int device, DeviceState* state) {
  int major = 0, num_sms = 0, optin = 0;
  cudaError_t err = cudaDeviceGetAttribute(
      &major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount,
                                 device);
  }
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(
        &optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  if (err != cudaSuccess) return err;
  state->info.num_sms = num_sms;
  state->max_smem = std::min(optin, kMaxSmemBytes);
  // Registers per thread as compiled for this device: they decide how many
  // warps fit on an SM, which the cost model needs exactly. 0 (the planner
  // estimates) where the runtime cannot say; the error is cleared so that
  // it is not taken for the launch's.
  int ptx_version = 0;
  for (int i = 0; i < kNumKernelInstances; ++i) {
    cudaFuncAttributes attributes;
    if (cudaFuncGetAttributes(&attributes, kKernels[i]) == cudaSuccess) {
      state->info.registers[i] = attributes.numRegs;
      ptx_version = attributes.ptxVersion;
    } else {
      cudaGetLastError();
      state->info.registers[i] = 0;
    }
  }
  state->info.clusters = major >= 9 && ptx_version >= 90;
  return cudaSuccess;
}

// The current device's ordinal and state, the state asked on first use. The
// queries run outside the lock; two threads that race on a new device store
// the same answer.
cudaError_t GetDeviceState(int* device_out, DeviceState* state) {
  const cudaError_t device_err = cudaGetDevice(device_out);
  if (device_err != cudaSuccess) return device_err;
  const int device = *device_out;
  DeviceTable& table = Devices();
  {
    std::lock_guard<std::mutex> lock(table.mu);
    const auto it = table.states.find(device);
    if (it != table.states.end()) {
      *state = it->second;
      return cudaSuccess;
    }
  }
  DeviceState fresh;
  const cudaError_t err = QueryDevice(device, &fresh);
  if (err != cudaSuccess) return err;
  std::lock_guard<std::mutex> lock(table.mu);
  *state = table.states.emplace(device, fresh).first->second;
  return cudaSuccess;
}

// Sets instance `index`'s MaxDynamicSharedMemorySize on `device` (the
// current one) to the device's limit, once: the attribute is per device
// and function, and one value that admits every config avoids a driver
// call per launch.
// Called after GetDeviceState; two threads that race set the same
// value.
cudaError_t AllowMaxSmem(int device, int index, int max_smem) {
  DeviceTable& table = Devices();
  {
    std::lock_guard<std::mutex> lock(table.mu);
    const auto it = table.states.find(device);
    if (it != table.states.end() && it->second.smem_attribute_set[index]) {
      return cudaSuccess;
    }
  }
  const cudaError_t err = cudaFuncSetAttribute(
      kKernels[index], cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem);
  if (err != cudaSuccess) return err;
  std::lock_guard<std::mutex> lock(table.mu);
  const auto it = table.states.find(device);
  if (it != table.states.end()) it->second.smem_attribute_set[index] = true;
  return cudaSuccess;
}

template <int PT, int KW, int PC>
cudaError_t LaunchOn(const Params& p, int blocks, int threads, int smem,
                     bool clusters, cudaStream_t stream) {
  if (p.split == 1) {
    CsrConvKernel<PT, KW, PC><<<blocks, threads, smem, stream>>>(p);
    return cudaGetLastError();
  }
  if (!clusters) return cudaErrorInvalidValue;
  cudaLaunchAttribute cluster;
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = p.split;
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  cudaLaunchConfig_t launch = {};
  launch.gridDim = dim3(blocks);
  launch.blockDim = dim3(threads);
  launch.dynamicSmemBytes = smem;
  launch.stream = stream;
  launch.attrs = &cluster;
  launch.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&launch, CsrConvKernel<PT, KW, PC>, p);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

// Launches config `c` (already checked by ConfigValid) on `device`, the
// current device, described by `state`.
cudaError_t Launch(const ConvGeometry& g, const float* input,
                   const int32_t* row_offsets, const int32_t* column_indices,
                   const float* values, int64_t nnz, const float* bias,
                   Activation activation, float* output,
                   const CsrConvGpuConfig& c, int device,
                   const DeviceState& state, cudaStream_t stream) {
  const Layout l = MakeLayout(g, c, nnz);
  Params p;
  p.input = input;
  p.row_offsets = row_offsets;
  p.column_indices = column_indices;
  p.values = values;
  p.bias = bias;
  p.output = output;
  p.N = static_cast<int>(g.N);
  p.H = static_cast<int>(g.H);
  p.W = static_cast<int>(g.W);
  p.C = static_cast<int>(g.C);
  p.K = static_cast<int>(g.K);
  p.R = static_cast<int>(g.R);
  p.S = static_cast<int>(g.S);
  p.P = static_cast<int>(g.P);
  p.Q = static_cast<int>(g.Q);
  p.stride_h = static_cast<int>(g.stride_h);
  p.stride_w = static_cast<int>(g.stride_w);
  p.dilation_h = static_cast<int>(g.dilation_h);
  p.dilation_w = static_cast<int>(g.dilation_w);
  p.pad_top = static_cast<int>(g.pad_top);
  p.pad_left = static_cast<int>(g.pad_left);
  p.nhwc = g.data_format == DataFormat::kNHWC ? 1 : 0;
  p.activation = activation == Activation::kRelu    ? 1
                 : activation == Activation::kRelu6 ? 2
                                                    : 0;
  p.nb = c.images;
  p.log_nb = Log2(c.images);
  p.th = c.tile_h;
  p.tw = c.tile_w;
  p.tih = l.tih;
  p.tiw = l.tiw;
  p.cc = c.chunk_c;
  p.log_cc = Log2(c.chunk_c);
  const int kb = c.warps * c.channels_per_warp;
  p.log_kb = Log2(kb);
  p.nbti = l.nbti;
  p.chan_pitch = l.chan_pitch;
  p.tile_floats = l.tile_floats;
  p.slot_pitch = l.slot_pitch;
  p.tiles_p = static_cast<int>((g.P + c.tile_h - 1) / c.tile_h);
  p.tiles_q = static_cast<int>((g.Q + c.tile_w - 1) / c.tile_w);
  p.k_groups = static_cast<int>((g.K + kb - 1) / kb);
  p.lists_off = l.lists_off;
  p.cursors_off = l.cursors_off;
  p.tapoff_off = l.tapoff_off;
  p.stab_off = l.stab_off;
  p.otab_off = l.otab_off;
  p.pool_cap = l.pool_cap;
  p.pool_off = l.pool_off;
  p.starts_off = l.starts_off;
  p.nch = l.nch;
  p.split = c.split_c;
  p.div_c = MakeFastDivisor(g.C);
  p.div_s = MakeFastDivisor(g.S);
  p.div_tiw = MakeFastDivisor(l.tiw);
  p.div_tw = MakeFastDivisor(c.tile_w);
  p.div_split = MakeFastDivisor(c.split_c);
  p.div_kg = MakeFastDivisor(p.k_groups);
  p.div_tq = MakeFastDivisor(p.tiles_q);
  p.div_tp = MakeFastDivisor(p.tiles_p);
  p.log_warps = Log2(c.warps);
  // StageNhwc's split of a chunk (StageChannelLanes,
  // StageChannelsPerThread); the rest goes in blocks of warps.
  const int cl = StageChannelLanes(c.chunk_c);
  p.log_cl = Log2(cl);
  p.stage_kc = StageChannelsPerThread(c.chunk_c);
  p.log_nq = Log2(c.chunk_c / (cl * p.stage_kc));
  p.parts = c.row_parts;
  p.log_parts = Log2(c.row_parts);
  p.part_floats = kb * l.slot_pitch;
  const int64_t blocks64 = static_cast<int64_t>((g.N + c.images - 1) / c.images) *
                           p.tiles_p * p.tiles_q * p.k_groups * c.split_c;
  if (blocks64 > INT_MAX) return cudaErrorInvalidConfiguration;
  const int blocks = static_cast<int>(blocks64);
  const int threads = 32 * c.warps * c.row_parts;
  const int smem = l.smem_bytes;
  // A config over this device's limit (kMaxSmemBytes is Hopper's) fails
  // here rather than in the launch.
  if (smem > state.max_smem) return cudaErrorInvalidValue;
  const int index =
      KernelInstanceIndex(c.pixels_per_lane, c.channels_per_warp, c.row_slots);
  const cudaError_t err = AllowMaxSmem(device, index, state.max_smem);
  if (err != cudaSuccess) return err;
  const bool clusters = state.info.clusters;
  switch (c.pixels_per_lane * 100 + c.channels_per_warp * 10 + c.row_slots) {
#define ESCORT_CASE(PT, KW, PC) \
  case PT * 100 + KW * 10 + PC:  \
    return LaunchOn<PT, KW, PC>(p, blocks, threads, smem, clusters, stream);
    ESCORT_KERNEL_INSTANCES(ESCORT_CASE)
#undef ESCORT_CASE
    default: return cudaErrorInvalidValue;
  }
}

// Process-wide cache of plans: planning searches thousands of tiles (about
// 2 ms on the host), and a model calls the op with each of its layer shapes
// again and again. The key holds everything the plan depends on: the whole
// geometry, nnz, and the device (ordinal, SM count, cluster support; the
// register counts follow from the ordinal). Bounded, least recently used
// out first, so that a process that sees endless shapes does not grow.
class PlanCache {
 public:
  static constexpr size_t kCapacity = 256;
  using Key = std::array<int64_t, 22>;

  static Key MakeKey(const ConvGeometry& g, int64_t nnz, int device,
                     const CsrConvGpuDeviceInfo& info) {
    return Key{g.N, g.H, g.W, g.C, g.K, g.R, g.S, g.P, g.Q,
               g.stride_h, g.stride_w, g.dilation_h, g.dilation_w,
               g.pad_top, g.pad_left, g.pad_bottom, g.pad_right,
               g.data_format == DataFormat::kNHWC ? 0 : 1,
               nnz, device, info.num_sms, info.clusters ? 1 : 0};
  }

  bool Find(const Key& key, CsrConvGpuConfig* config) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = index_.find(key);
    if (it == index_.end()) return false;
    entries_.splice(entries_.begin(), entries_, it->second);  // Most recent.
    *config = it->second->second;
    return true;
  }

  void Insert(const Key& key, const CsrConvGpuConfig& config) {
    std::lock_guard<std::mutex> lock(mu_);
    if (index_.count(key) != 0) return;  // Another thread planned it too.
    entries_.emplace_front(key, config);
    index_.emplace(key, entries_.begin());
    if (entries_.size() > kCapacity) {
      index_.erase(entries_.back().first);
      entries_.pop_back();
    }
  }

 private:
  struct KeyHash {
    size_t operator()(const Key& key) const {
      uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields.
      for (int64_t v : key) h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ull;
      return static_cast<size_t>(h);
    }
  };
  using Entries = std::list<std::pair<Key, CsrConvGpuConfig>>;

  std::mutex mu_;
  Entries entries_;  // Most recently used first.
  std::unordered_map<Key, Entries::iterator, KeyHash> index_;
};

PlanCache& Plans() {
  static auto* cache = new PlanCache;  // Never destroyed, as Devices()'s.
  return *cache;
}

}  // namespace

CsrConvGpuConfig ChooseCsrConvGpuConfig(const ConvGeometry& geometry,
                                        int64_t nnz, int num_sms,
                                        bool clusters) {
  CsrConvGpuDeviceInfo info;
  int device = 0;
  DeviceState state;
  if (GetDeviceState(&device, &state) == cudaSuccess) {
    info = state.info;
  } else {
    cudaGetLastError();  // Registers unknown: the planner estimates them.
  }
  info.num_sms = num_sms;
  info.clusters = clusters;
  return PlanCsrConvGpu(geometry, nnz, info);
}

cudaError_t CsrConv2DGpuWithConfig(const ConvGeometry& g, const float* input,
                                   const int32_t* row_offsets,
                                   const int32_t* column_indices,
                                   const float* values, int64_t nnz,
                                   const float* bias, Activation activation,
                                   float* output,
                                   const CsrConvGpuConfig& c,
                                   cudaStream_t stream) {
  if (g.N == 0 || g.P == 0 || g.Q == 0 || g.K == 0) return cudaSuccess;
  if (!ConfigValid(g, c, nnz)) return cudaErrorInvalidValue;
  int device = 0;
  DeviceState state;
  const cudaError_t err = GetDeviceState(&device, &state);
  if (err != cudaSuccess) return err;
  return Launch(g, input, row_offsets, column_indices, values, nnz, bias,
                activation, output, c, device, state, stream);
}

cudaError_t CsrConv2DGpu(const ConvGeometry& g, const float* input,
                         const int32_t* row_offsets,
                         const int32_t* column_indices, const float* values,
                         int64_t nnz, const float* bias, Activation activation,
                         float* output, cudaStream_t stream) {
  if (g.N == 0 || g.P == 0 || g.Q == 0 || g.K == 0) return cudaSuccess;
  int device = 0;
  DeviceState state;
  const cudaError_t err = GetDeviceState(&device, &state);
  if (err != cudaSuccess) return err;
  const PlanCache::Key key = PlanCache::MakeKey(g, nnz, device, state.info);
  CsrConvGpuConfig config;
  if (!Plans().Find(key, &config)) {
    // Planned outside the cache's lock: other layers' calls go on meanwhile.
    config = PlanCsrConvGpu(g, nnz, state.info);
    Plans().Insert(key, config);
  }
  if (!ConfigValid(g, config, nnz)) return cudaErrorInvalidValue;
  return Launch(g, input, row_offsets, column_indices, values, nnz, bias,
                activation, output, config, device, state, stream);
}

}  // namespace escort
