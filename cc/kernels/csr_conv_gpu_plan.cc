// The planner of csr_conv_gpu_plan.h: shared-memory layout, validity and
// the cost model that picks a launch's tile. Host code only.
#include "cc/kernels/csr_conv_gpu_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace escort {
namespace gpu_plan {

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
  if (KernelInstanceIndex(pt, kw, c.row_slots) < 0) return false;
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

}  // namespace gpu_plan

namespace {

using gpu_plan::AlignUp;
using gpu_plan::ConfigValid;
using gpu_plan::KernelInstance;
using gpu_plan::KernelInstanceIndex;
using gpu_plan::kKernelInstances;
using gpu_plan::kListChannels;
using gpu_plan::kSmemPerSm;
using gpu_plan::Layout;
using gpu_plan::Log2;
using gpu_plan::MakeLayout;
using gpu_plan::StageChannelsPerThread;

// Instructions per staged float: StageNhwc issues about 14 / kc + 2 (kc
// channels per thread), the NCHW copy loop 22.
double StagingInstructionsPerFloat(const ConvGeometry& g, int chunk_c) {
  return g.data_format == DataFormat::kNHWC
             ? 14.0 / StageChannelsPerThread(chunk_c) + 2.0
             : 22.0;
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
// benchmarks/results/gpu_b1_sweep*.json; [10] alone to 438 tiles around the
// heuristic's (benchmarks/results/gpu_b1_one_chunk_sweep.json).
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
// (benchmarks/results/gpu_b32_smem_sweep_session12.json; e.g. a 27 x 9 tile
// with 1.94 wavefronts per load ran 17% slower than the 9 x 27 one with
// 1.56 on caffenet_conv2). Less than 1: the shared pipe is one of several
// limits.
constexpr double kConflictWeight = 0.25;
// Fixed cost of a split, in cycles: on the H100, splitting a batch-1 tile
// two ways added 7-16 us on nine of the ten benchmark layers and 2 us on
// the smallest (benchmarks/results/gpu_split_sweep.json), with or without
// the row preload (benchmarks/gpu/NOTES.md). With this value the model
// splits only where the sweeps measured a gain.
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
                    const CsrConvGpuConfig& c, int num_sms, int compiled) {
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
  // Registers are allocated per warp in units of 8 per thread; `compiled`
  // is 0 where the device info does not know them.
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

CsrConvGpuConfig PlanCsrConvGpu(const ConvGeometry& g, int64_t nnz,
                                const CsrConvGpuDeviceInfo& device) {
  const double cols = static_cast<double>(g.K) * g.R * g.S * g.C;
  const double density = cols > 0 ? std::min(1.0, nnz / cols) : 0.0;
  CsrConvGpuConfig best;
  double best_cost = 1e31;
  const int max_nb = g.N >= 32 ? 32 : (1 << Log2(static_cast<int>(std::max<int64_t>(g.N, 1))));
  auto consider = [&](CsrConvGpuConfig c) {
    for (int split = 1; split <= (device.clusters ? 8 : 1); split *= 2)
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
          const double cost = EstimateCost(
              g, density, nnz, c, device.num_sms,
              device.registers[KernelInstanceIndex(c.pixels_per_lane,
                                                   c.channels_per_warp,
                                                   c.row_slots)]);
          if (cost < best_cost) {
            best_cost = cost;
            best = c;
          }
        }
        if (cc >= g.C) break;  // Larger chunks change nothing.
      }
    }
  };
  for (const KernelInstance& in : kKernelInstances) {
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
  // Nothing fits in shared memory: chunk_c 0 makes that explicit, so that
  // the launcher's ConfigValid rejects the result.
  if (best_cost >= 1e31) best.chunk_c = 0;
  return best;
}

}  // namespace escort
