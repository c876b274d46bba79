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
// bank-conflict weight to H200 ones (ChooseCsrConvGpuConfig;
// benchmarks/gpu/NOTES.md has the data).
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>

#include "cc/kernels/csr_conv_gpu.h"

namespace escort {
namespace {

constexpr int kMaxSmemBytes = 227 * 1024;  // opt-in limit per block, sm_80+.
constexpr int kSmemPerSm = 228 * 1024;
// Channels per tap that one per-chunk list covers (the path without the
// preload): chunks beyond it run in windows, so that a one-chunk tile of a
// wide layer does not need lists for all its channels.
constexpr int kListChannels = 128;

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

// Threads per block an instance allows (row parts multiply the warps):
// instances with few accumulators (PT * KW <= 8: at most 64 registers) run
// up to 32 warps, the others up to 16 with up to 128 registers, the cap
// they had at 256 threads and two blocks per SM.
constexpr int MaxThreads(int pt, int kw) { return pt * kw <= 8 ? 1024 : 512; }

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

// (pixels_per_lane, channels_per_warp, row_slots) instantiated. row_slots
// (PC) 1 is the general path; PC > 1 needs stride_w 1 and
// tile_w == (32 / images) * PC, tile_h == PT / PC.
#define ESCORT_KERNEL_INSTANCES(X)                                        \
  X(2, 1, 1) X(2, 2, 1) X(4, 1, 1) X(4, 2, 1) X(4, 4, 1) X(8, 1, 1)       \
  X(8, 2, 1) X(8, 4, 1) X(16, 1, 1) X(16, 2, 1) X(4, 2, 4) X(4, 4, 4)     \
  X(8, 2, 4) X(8, 4, 4) X(8, 2, 8) X(8, 4, 8) X(16, 1, 8) X(16, 2, 8)     \
  X(16, 2, 4) X(16, 1, 4)

// The kernel of instance (pt, kw, pc) and its position in
// ESCORT_KERNEL_INSTANCES, or nullptr where it is not instantiated.
const void* InstanceKernel(int pt, int kw, int pc, int* position) {
  int i = 0;
#define ESCORT_FIND(PT, KW, PC)                                      \
  if (pt == PT && kw == KW && pc == PC) {                            \
    *position = i;                                                   \
    return reinterpret_cast<const void*>(CsrConvKernel<PT, KW, PC>); \
  }                                                                  \
  ++i;
  ESCORT_KERNEL_INSTANCES(ESCORT_FIND)
#undef ESCORT_FIND
  return nullptr;
}

bool Instantiated(int pt, int kw, int pc) {
  int position;
  return InstanceKernel(pt, kw, pc, &position) != nullptr;
}

// Registers per thread of instance (pt, kw, pc) as compiled, for the
// occupancy estimate of the cost model (a formula missed v14's growth by up
// to 30 registers, which cost googlenet at batch 32 a third of its resident
// warps); 0 where unknown. Asked once per instance and process.
int CompiledRegisters(int pt, int kw, int pc) {
#define ESCORT_COUNT(PT, KW, PC) +1
  constexpr int kInstances = 0 ESCORT_KERNEL_INSTANCES(ESCORT_COUNT);
#undef ESCORT_COUNT
  static std::atomic<int> cache[kInstances] = {};  // 0: not asked, -1: failed
  int index = 0;
  const void* kernel = InstanceKernel(pt, kw, pc, &index);
  if (kernel == nullptr) return 0;
  int regs = cache[index].load(std::memory_order_relaxed);
  if (regs == 0) {
    cudaFuncAttributes attributes;
    if (cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess) {
      regs = attributes.numRegs;
    } else {
      cudaGetLastError();  // Not sticky: leave no error for the launch check.
      regs = -1;
    }
    cache[index].store(regs, std::memory_order_relaxed);
  }
  return std::max(regs, 0);
}

int Log2(int v) {
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}
bool IsPow2(int v) { return v > 0 && (v & (v - 1)) == 0; }

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

// How StageNhwc splits a chunk of chunk_c channels: channel lanes per warp
// (8, fewer only below 8 channels) and channels per thread (up to 4).
int StageChannelLanes(int chunk_c) { return std::min(chunk_c, 8); }
int StageChannelsPerThread(int chunk_c) {
  return std::min(4, chunk_c / StageChannelLanes(chunk_c));
}
// Instructions per staged float: StageNhwc issues about 14 / kc + 2 (kc
// channels per thread), the NCHW copy loop 22.
double StagingInstructionsPerFloat(const ConvGeometry& g, int chunk_c) {
  return g.data_format == DataFormat::kNHWC
             ? 14.0 / StageChannelsPerThread(chunk_c) + 2.0
             : 22.0;
}

struct Layout {
  int tih, tiw, nbti, chan_pitch, tile_floats, slot_pitch;
  int lists_off, cursors_off, tapoff_off, stab_off, otab_off, smem_bytes;
  int pool_cap, pool_off, starts_off, nch;
};

int AlignUp(int v, int a) { return (v + a - 1) / a * a; }

Layout MakeLayout(const ConvGeometry& g, const CsrConvGpuConfig& c,
                  int64_t nnz) {
  Layout l;
  const int rs = static_cast<int>(g.R * g.S);
  l.tih = static_cast<int>((c.tile_h - 1) * g.stride_h + (g.R - 1) * g.dilation_h + 1);
  l.tiw = static_cast<int>((c.tile_w - 1) * g.stride_w + (g.S - 1) * g.dilation_w + 1);
  l.nbti = c.images * l.tih * l.tiw;
  // NHWC staging writes 8 channels x 4 positions per instruction (see
  // StageNhwc): a pitch of 4 x odd floats spreads those over all 32 banks.
  l.chan_pitch = AlignUp(l.nbti + 4, 8) - 4;
  // Channels past C are never staged.
  l.tile_floats = static_cast<int>(std::min<int64_t>(c.chunk_c, g.C)) * l.chan_pitch;
  l.nch = static_cast<int>((g.C + c.chunk_c - 1) / c.chunk_c);
  const int nslots = c.images * c.tile_h * c.tile_w;
  // Odd: the NHWC epilogue's loads walk this stride across lanes.
  l.slot_pitch = nslots | 1;
  const int kb = c.warps * c.channels_per_warp;
  // One chunk needs no second buffer.
  const int region = std::max((l.nch > 1 ? 2 : 1) * l.tile_floats,
                              c.row_parts * kb * l.slot_pitch);
  int off = AlignUp(region * 4, 16);
  l.cursors_off = off;
  off += c.warps * c.channels_per_warp * rs * 4;
  l.tapoff_off = off;
  off += rs * 4;
  l.stab_off = off;
  off += l.nbti * 4;
  l.otab_off = off;
  off += nslots * 4;
  l.pool_cap = 0;
  if (c.preload && l.nch <= 64 && g.K > 0) {
    // Room for 1.25x the block's expected entries; a block whose rows are
    // longer takes the per-chunk path instead.
    const double mean = static_cast<double>(nnz) / g.K * kb;
    l.pool_cap = static_cast<int>(std::min<double>(1.25 * mean + 64, 1 << 20));
  }
  // A block uses either the per-chunk lists or the preloaded pool and its
  // chunk starts, never both: they share one section.
  off = AlignUp(off, 8);
  l.lists_off = off;
  l.pool_off = off;
  l.starts_off = off + l.pool_cap * 8;
  const int list_channels =
      static_cast<int>(std::min<int64_t>(std::min(c.chunk_c, kListChannels), g.C));
  const int lists_end = off + c.warps * rs * list_channels * 8;
  const int pool_end =
      l.starts_off + (l.pool_cap > 0 ? c.row_parts * kb * (l.nch + 1) * 4 : 0);
  l.smem_bytes = AlignUp(std::max(lists_end, pool_end), 16);
  return l;
}

bool ConfigValid(const ConvGeometry& g, const CsrConvGpuConfig& c,
                 int64_t nnz) {
  const int pt = c.pixels_per_lane, kw = c.channels_per_warp;
  if (!Instantiated(pt, kw, c.row_slots)) return false;
  if (c.warps != 4 && c.warps != 8) return false;
  if (!IsPow2(c.row_parts) || c.row_parts > 4 ||
      32 * c.warps * c.row_parts > MaxThreads(pt, kw)) {
    return false;
  }
  if (!IsPow2(c.images) || c.images > 32) return false;
  if (c.row_slots > 1 &&
      (g.stride_w != 1 || c.tile_w != (32 / c.images) * c.row_slots ||
       c.tile_h != pt / c.row_slots)) {
    return false;
  }
  if (!IsPow2(c.chunk_c) || c.chunk_c > 512) return false;
  if (c.tile_h < 1 || c.tile_w < 1) return false;
  if (static_cast<int64_t>(c.images) * c.tile_h * c.tile_w > 32 * pt)
    return false;
  // Each rank of a split needs a chunk of its own; 8 is the portable
  // cluster size limit.
  const Layout l = MakeLayout(g, c, nnz);
  if (c.split_c < 1 || c.split_c > 8 || c.split_c > std::max(l.nch, 1))
    return false;
  return l.smem_bytes <= kMaxSmemBytes;
}

cudaError_t CurrentDeviceAttribute(cudaDeviceAttr attribute, int* value) {
  int device = 0;
  const cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  return cudaDeviceGetAttribute(value, attribute, device);
}

// Whether the current device runs clusters and the kernel image loaded for
// it was compiled with them: a PTX-only build for an older architecture
// JIT-compiled on sm_90 would drop the cluster reduction (see TileValue).
// Every instance comes from the same module, so one stands for all. The
// answer is cached per device: the launcher asks on every call.
cudaError_t CheckClusterSupport() {
  constexpr int kCachedDevices = 64;
  enum : int { kUnknown = 0, kSupported = 1, kUnsupported = 2 };
  static std::atomic<int> cache[kCachedDevices] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const bool cacheable = device >= 0 && device < kCachedDevices;
  const int known = cacheable ? cache[device].load(std::memory_order_relaxed)
                              : kUnknown;
  if (known != kUnknown) {
    return known == kSupported ? cudaSuccess : cudaErrorInvalidValue;
  }
  int major = 0;
  err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                               device);
  if (err != cudaSuccess) return err;
  cudaFuncAttributes attributes;
  err = cudaFuncGetAttributes(&attributes, CsrConvKernel<4, 1, 1>);
  if (err != cudaSuccess) return err;
  const bool supported = major >= 9 && attributes.ptxVersion >= 90;
  if (cacheable) {
    cache[device].store(supported ? kSupported : kUnsupported,
                        std::memory_order_relaxed);
  }
  return supported ? cudaSuccess : cudaErrorInvalidValue;
}

template <int PT, int KW, int PC>
cudaError_t LaunchOn(const Params& p, int blocks, int threads, int smem,
                     cudaStream_t stream) {
  // The dynamic shared-memory limit is a per-device attribute of the
  // function; setting it on every call is cheap next to the launch and keeps
  // multi-device processes correct.
  cudaError_t err = cudaFuncSetAttribute(
      CsrConvKernel<PT, KW, PC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
      smem);
  if (err != cudaSuccess) return err;
  if (p.split == 1) {
    CsrConvKernel<PT, KW, PC><<<blocks, threads, smem, stream>>>(p);
    return cudaGetLastError();
  }
  err = CheckClusterSupport();
  if (err != cudaSuccess) return err;
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
  err = cudaLaunchKernelEx(&launch, CsrConvKernel<PT, KW, PC>, p);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

// Estimated SM-cycles of one config. Calibrated with Nsight Compute on the
// H100 (benchmarks/gpu/NOTES.md): the kernel issues about 2.6 instructions
// per cycle per SM, and its cost is instructions (the hot loop's load, FMA
// and address add per slot, the per-tap list rounds, the staging copies)
// or the shared-memory pipe (one 32-lane load per cycle), whichever is
// larger, times the wave quantisation of the grid; or, where larger (small
// grids), the latency model below.
// Constants of the model, fitted to the H100 timings of NOTES.md: per-chunk
// block overhead (barrier, cp.async wait, list latency) in cycles, staging
// instructions per copied word, warps per SM that hide latency, preload
// instructions per entry, issued instructions per cycle.
constexpr double kCostModel[5] = {86.0, 5.94, 16.8, 1.1, 3.99};
// Small grids (batch 1) are bound by each warp's chain of dependent
// instructions, not by issue. Their time in microseconds:
//   [0] + waves * (n_w * ([1] + [3] * warps_per_sm) + [2] * chunks
//                  + [7] * channels_per_warp * chunks
//                  + [9] * channels_per_warp * chunks without the preload),
//   n_w = hot-loop instructions + [8] * extra shared-load wavefronts (bank
//         conflicts) + [4] * staging instructions + [5] * preload rounds
//         ([10] with one chunk: one pass, no bucketing)
//         + list-building instructions + [6]   (per warp)
// [0]-[9] fitted (least squares on log time, 6,000 tiles of the ten
// benchmark layers, 9% rms error) to the H100 batch-1 sweeps in
// benchmarks/results/history/gpu_sweep_b1_h100_v11.json and _v12.json; [10]
// alone to 438 tiles around the heuristic's
// (benchmarks/results/history/gpu_sweep_b1_h100_v14_one-chunk.json).
constexpr double kLatencyModel[11] = {2.427,  1.089e-3, 0.3766, 1.102e-4,
                                      2.744,  86.68,    849.6,  0.1226,
                                      2.228,  0.1618,   31.9};
// Cycles per microsecond (H100 boost clock) and the factor from the
// throughput model's cycles to measured ones (1.6-2.9 at batch 32), to put
// the two estimates on one scale.
constexpr double kCyclesPerMicro = 1980.0;
constexpr double kThroughputScale = 2.0;
// Share of the hot loop's extra shared-memory wavefronts (bank conflicts of
// the lane->pixel map, SlotWavefronts) that shows in batch-32 time, chosen on
// 570 swept tiles of the ten benchmark layers on an H200
// (benchmarks/results/history/gpu_sweep_b32_h200_v15_smem.json; e.g. a
// 27 x 9 tile with 1.94 wavefronts per load ran 17% slower than the 9 x 27
// one with 1.56 on caffenet_conv2). Less than 1: the shared pipe is one of
// several limits.
constexpr double kConflictWeight = 0.25;
// Fixed cost of a split, in cycles: on the H100, splitting a batch-1 tile
// two ways added 7-16 us on nine of the ten benchmark layers and 2 us on
// the smallest (benchmarks/results/history/gpu_sweep_h100_v9_split.json),
// with or without the row preload (benchmarks/gpu/NOTES.md). With this
// value the model splits only where the sweeps measured a gain.
constexpr double kSplitCycles = 14000.0;

// Mean shared-memory wavefronts of one hot-loop slot load (1: conflict
// free): the 32 lanes' words of each slot, as the kernel maps lanes to
// (image, pixel); spare slots read pixel 0. The row-slot path (PC > 1) is
// conflict free by construction.
double SlotWavefronts(const ConvGeometry& g, const CsrConvGpuConfig& c,
                      const Layout& l) {
  if (c.row_slots > 1) return 1.0;
  const int log_nb = Log2(c.images), g_step = 32 >> log_nb;
  const int tile_pixels = c.tile_h * c.tile_w;
  double total = 0;
  for (int i = 0; i < c.pixels_per_lane; ++i) {
    int words[32];
    for (int lane = 0; lane < 32; ++lane) {
      int pix = (lane >> log_nb) + g_step * i;
      if (pix >= tile_pixels) pix = 0;
      const int py = pix / c.tile_w, px = pix - py * c.tile_w;
      words[lane] = ((py * static_cast<int>(g.stride_h) * l.tiw +
                      px * static_cast<int>(g.stride_w)) << log_nb) +
                    (lane & (c.images - 1));
    }
    std::sort(words, words + 32);
    const int distinct = static_cast<int>(std::unique(words, words + 32) - words);
    int per_bank[32] = {};
    int worst = 0;
    for (int w = 0; w < distinct; ++w) worst = std::max(worst, ++per_bank[words[w] & 31]);
    total += worst;
  }
  return total / c.pixels_per_lane;
}

double EstimateCost(const ConvGeometry& g, double density, int64_t nnz,
                    const CsrConvGpuConfig& c, int num_sms) {
  const Layout l = MakeLayout(g, c, nnz);
  const double rs = static_cast<double>(g.R * g.S);
  const int kb = c.warps * c.channels_per_warp;
  const int pt = c.pixels_per_lane;
  const int parts = c.row_parts;
  const int nwarps = c.warps * parts;
  const int64_t blocks = ((g.N + c.images - 1) / c.images) *
                         ((g.P + c.tile_h - 1) / c.tile_h) *
                         ((g.Q + c.tile_w - 1) / c.tile_w) *
                         ((g.K + kb - 1) / kb) * c.split_c;
  // Chunks of the busiest rank.
  const int64_t nch_all = l.nch;
  const int64_t nch = (nch_all + c.split_c - 1) / c.split_c;
  const double clen = static_cast<double>(std::min<int64_t>(c.chunk_c, g.C));
  const double entries = rs * clen * density;
  const double adds = c.row_slots > 1 ? pt / c.row_slots : pt;
  const double per_tap = clen * density;
  // Without the preload: per chunk and tap group, a list round per
  // kListChannels window and one per four entries of a tap.
  const double windows = std::ceil(clen / kListChannels);
  const double rounds = l.pool_cap > 0 ? 0.0
                       : std::ceil(rs / 32.0) * (1.5 * windows + per_tap / 4.0);
  const double issue_warp_chunk =
      c.channels_per_warp * (entries * (2.0 * pt + adds + 4.0) + rounds * 45.0 + 20.0);
  const double wavefronts = SlotWavefronts(g, c, l);
  const double lds_warp_chunk =
      c.channels_per_warp *
      (entries * (pt * (1.0 + kConflictWeight * (wavefronts - 1.0)) + 1.0) + rounds * 6.0);
  const double staging = clen * l.nbti / 32.0;
  // kCostModel[1] was fitted to a copy loop of 22 instructions per float.
  const double staging_per_float = StagingInstructionsPerFloat(g, c.chunk_c);
  const double staging_scale = staging_per_float / 22.0;
  // Preloading reads each row once, coalesced, in two bucketing passes (one
  // where there is one chunk).
  const double preload =
      l.pool_cap > 0
          ? (l.nch == 1 ? 1.0 : 2.0) * kCostModel[3] * kb * (rs * g.C * density) / 32.0
          : 0.0;
  // Epilogue: each rank stores 1/split of the tile, reading split partials.
  const double tile_words = static_cast<double>(kb) * c.images * c.tile_h * c.tile_w;
  const double cluster_cycles = c.split_c > 1 ? kSplitCycles : 0.0;
  // Row parts add each extra warp's per-chunk overhead and a shared read
  // per part in the epilogue.
  const double block_issue =
      nch * (c.warps * issue_warp_chunk + kCostModel[1] * staging_scale * staging +
             (parts - 1) * kb * 20.0) +
      preload +
      tile_words / 32.0 * (4.0 + (c.split_c > 1 ? 3.0 : 0.0) + (parts - 1)) +
      400.0;
  const double block_lds = nch * (c.warps * lds_warp_chunk + 2.0 * staging);
  const double block_cycles =
      std::max(block_issue / kCostModel[4], block_lds / 0.9) +
      nch * kCostModel[0] + cluster_cycles;
  const int compiled = CompiledRegisters(pt, c.channels_per_warp, c.row_slots);
  // Registers are allocated per warp in units of 8 per thread.
  const int regs = compiled > 0 ? AlignUp(compiled, 8)
                                : 40 + pt * (c.channels_per_warp + 1);
  int occ = kSmemPerSm / (l.smem_bytes + 1024);
  occ = std::min(occ, 64 / nwarps);
  occ = std::min(occ, 65536 / (std::min(regs, 128) * 32 * nwarps));
  if (occ < 1) return 1e30;
  const int64_t per_sm = (blocks + num_sms - 1) / num_sms;
  const int64_t conc = std::min<int64_t>(occ, per_sm);
  // Too few warps per SM leave load and barrier latency exposed.
  const double eff = std::min(1.0, conc * nwarps / kCostModel[2]);
  const double throughput = kThroughputScale * per_sm * block_cycles / eff;
  // Latency (kLatencyModel): one warp's instructions, its row part's
  // entries in the hot loop, its share of the staging copies and of the
  // preload's rounds, or without the preload the per-chunk list rounds (the
  // whole row then runs in the part-0 warp).
  const bool pooled = l.pool_cap > 0;
  const double part_len = rs * g.C * density / (pooled ? parts : 1);
  const double hot =
      c.channels_per_warp * part_len *
          (2.0 * pt + adds + 4.0 +
           kLatencyModel[8] * pt * (wavefronts - 1.0)) +
      (pooled ? 0.0 : nch_all * c.channels_per_warp * rounds * 45.0);
  const double stage_w =
      static_cast<double>(std::min<int64_t>(c.chunk_c, g.C)) * nch * l.nbti /
      (32.0 * nwarps) * staging_per_float;
  const double pre_w = pooled
      ? c.channels_per_warp * 2.0 * std::ceil(part_len * nch / nch_all / 128.0) * 4.0
      : 0.0;
  const double n_w = hot * nch / nch_all + kLatencyModel[4] * stage_w +
                     kLatencyModel[nch_all == 1 ? 10 : 5] * pre_w + kLatencyModel[6];
  const double waves = static_cast<double>((per_sm + occ - 1) / occ);
  const double latency =
      kCyclesPerMicro *
          (kLatencyModel[0] +
           waves * (n_w * (kLatencyModel[1] + kLatencyModel[3] * conc * nwarps) +
                    nch * (kLatencyModel[2] +
                           (kLatencyModel[7] + (pooled ? 0.0 : kLatencyModel[9])) *
                               c.channels_per_warp))) +
      cluster_cycles;
  return std::max(throughput, latency);
}

}  // namespace

CsrConvGpuConfig ChooseCsrConvGpuConfig(const ConvGeometry& g, int64_t nnz,
                                        int num_sms, bool clusters) {
  // One-entry cache: the op calls this with the same layer again and again.
  struct Key {
    int64_t v[16];
  };
  thread_local Key last_key{};
  thread_local CsrConvGpuConfig last_config;
  thread_local bool have_last = false;
  const Key key{{g.N, g.H, g.W, g.C, g.K, g.R, g.S, g.P, g.Q, g.stride_h,
                 g.stride_w, g.dilation_h, g.dilation_w,
                 (g.data_format == DataFormat::kNHWC ? 1 : 0) + (clusters ? 2 : 0),
                 nnz, num_sms}};
  if (have_last && std::equal(key.v, key.v + 16, last_key.v)) return last_config;

  const double cols = static_cast<double>(g.K) * g.R * g.S * g.C;
  const double density = cols > 0 ? std::min(1.0, nnz / cols) : 0.0;
  CsrConvGpuConfig best;
  double best_cost = 1e31;
  const int max_nb = g.N >= 32 ? 32 : (1 << Log2(static_cast<int>(std::max<int64_t>(g.N, 1))));
  auto consider = [&](CsrConvGpuConfig c) {
    for (int split = 1; split <= (clusters ? 8 : 1); split *= 2)
    for (int parts = 1; parts <= 4; parts *= 2)
    for (int preload = 0; preload <= 1; ++preload) {
      c.split_c = split;
      c.row_parts = parts;
      c.preload = preload;
      // Chunks under 8 channels were slow on every layer measured (a
      // barrier and a cp.async wait per few nonzeros); smaller only for
      // tiny C or when shared memory forces it (the loop's last resort).
      const int min_cc = static_cast<int>(std::min<int64_t>(8, std::max<int64_t>(g.C, 1)));
      for (int cc = 1; cc <= 512; cc *= 2) {
        if (cc < min_cc && best_cost < 1e30) continue;
        c.chunk_c = cc;
        if (ConfigValid(g, c, nnz)) {
          const double cost = EstimateCost(g, density, nnz, c, num_sms);
          if (cost < best_cost) {
            best_cost = cost;
            best = c;
          }
        }
        if (cc >= g.C) break;  // Larger chunks change nothing.
      }
    }
  };
  struct Instance {
    int pt, kw, pc;
  };
#define ESCORT_LIST(PT, KW, PC) {PT, KW, PC},
  static const Instance kInstances[] = {ESCORT_KERNEL_INSTANCES(ESCORT_LIST)};
#undef ESCORT_LIST
  for (const Instance& in : kInstances) {
    for (int warps = 4; warps <= 8; warps += 4) {
      for (int nb = 1; nb <= max_nb; nb *= 2) {
        CsrConvGpuConfig c;
        c.pixels_per_lane = in.pt;
        c.channels_per_warp = in.kw;
        c.warps = warps;
        c.images = nb;
        c.row_slots = in.pc;
        if (in.pc > 1) {  // The tile follows from the lane layout.
          c.tile_w = (32 / nb) * in.pc;
          c.tile_h = in.pt / in.pc;
          if (c.tile_w > 2 * g.Q + 32) continue;  // Mostly idle lanes.
          consider(c);
          continue;
        }
        const int pix = 32 * in.pt / nb;
        // Tile widths worth trying: powers of two and even splits of Q.
        int tws[16];
        int ntw = 0;
        for (int v = 1; v <= pix && v <= 64; v *= 2) tws[ntw++] = v;
        for (int d = 1; d <= 4; ++d) {
          const int v = static_cast<int>((g.Q + d - 1) / d);
          if (v <= pix) tws[ntw++] = v;
        }
        for (int i = 0; i < ntw; ++i) {
          c.tile_w = static_cast<int>(std::min<int64_t>(tws[i], g.Q));
          c.tile_h = static_cast<int>(std::min<int64_t>(pix / c.tile_w, g.P));
          if (c.tile_h < 1) continue;
          consider(c);
        }
      }
    }
  }
  last_key = key;
  last_config = best;
  have_last = true;
  return best;
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
  switch (c.pixels_per_lane * 100 + c.channels_per_warp * 10 + c.row_slots) {
#define ESCORT_CASE(PT, KW, PC) \
  case PT * 100 + KW * 10 + PC:  \
    return LaunchOn<PT, KW, PC>(p, blocks, threads, smem, stream);
    ESCORT_KERNEL_INSTANCES(ESCORT_CASE)
#undef ESCORT_CASE
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t CsrConv2DGpu(const ConvGeometry& geometry, const float* input,
                         const int32_t* row_offsets,
                         const int32_t* column_indices, const float* values,
                         int64_t nnz, const float* bias, Activation activation,
                         float* output, cudaStream_t stream) {
  if (geometry.N == 0 || geometry.P == 0 || geometry.Q == 0 ||
      geometry.K == 0) {
    return cudaSuccess;
  }
  int num_sms = 0;
  const cudaError_t err =
      CurrentDeviceAttribute(cudaDevAttrMultiProcessorCount, &num_sms);
  if (err != cudaSuccess) return err;
  const bool clusters = CheckClusterSupport() == cudaSuccess;
  const CsrConvGpuConfig config =
      ChooseCsrConvGpuConfig(geometry, nnz, num_sms, clusters);
  return CsrConv2DGpuWithConfig(geometry, input, row_offsets, column_indices,
                                values, nnz, bias, activation, output, config,
                                stream);
}

}  // namespace escort
