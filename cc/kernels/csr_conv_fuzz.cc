// libFuzzer target for layer 1: geometry, CSR validation and the CPU kernel.
//
// Each input decodes into small shapes and attributes (now and then a wild
// int64 to reach the sign and overflow checks) and CSR arrays that are
// valid, valid-then-mutated or raw bytes. The checks, any failure aborts:
//   - ComputeOutputSize under the shape function's preconditions and
//     ComputeConvGeometry never hit UB; accepted geometry fits int32.
//   - ValidateCsrFilter agrees with an independent predicate both ways.
//   - On what passes, every ISA path of CsrConv2DCpu matches
//     CsrConv2DReference within float tolerance, writes every output, and
//     any split of its work units gives bit-identical output.
// All arrays are exact-size heap vectors so ASan sees any read past them.
//
// Build (see .ci/fuzz.sh): clang++ -fsanitize=fuzzer,address,undefined.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cc/kernels/csr_conv.h"
#include "cc/kernels/csr_conv_cpu_internal.h"

namespace escort {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
// Larger geometries are only validated: running them would spend the
// fuzzer's time on arithmetic rather than on new shapes.
constexpr int64_t kMaxRunElements = 1 << 14;
// Bit pattern no computation produces (kernels only make the default NaN or
// propagate the input's): a survivor in the output was never written.
constexpr uint32_t kUnwritten = 0x7fa5a5a5u;

// How far inputs get, printed at exit: a fuzzer that rarely reaches the
// kernels would pass without testing them.
struct Stats {
  long inputs = 0, valid_geometry = 0, valid_filter = 0, kernels_run = 0;
  ~Stats() {
    std::fprintf(stderr,
                 "csr_conv_fuzz: %ld inputs, %ld valid geometry, %ld valid "
                 "filter, %ld compared against the reference\n",
                 inputs, valid_geometry, valid_filter, kernels_run);
  }
} stats;

[[noreturn]] void Die(const std::string& what, const std::string& context) {
  std::fprintf(stderr, "FUZZ FAILURE: %s\n  %s\n", what.c_str(),
               context.c_str());
  std::abort();
}

// Mostly a value in [lo, hi]; 1 in 16 a boundary of the checks or any int64.
int64_t SmallOrWild(FuzzedDataProvider& fdp, int64_t lo, int64_t hi) {
  if (fdp.ConsumeIntegralInRange<int>(0, 15) != 0) {
    return fdp.ConsumeIntegralInRange<int64_t>(lo, hi);
  }
  static constexpr int64_t kWild[] = {
      -1, 0, 1, int64_t{1} << 30, (int64_t{1} << 30) + 1, int64_t{1} << 31,
      kInt32Max, kInt32Max + 1, kInt64Max, std::numeric_limits<int64_t>::min(),
      int64_t{1} << 62, 46341 /* ceil(sqrt(2^31)) */};
  const int pick = fdp.ConsumeIntegralInRange<int>(0, 12);
  return pick < 12 ? kWild[pick] : fdp.ConsumeIntegral<int64_t>();
}

std::string Describe(const ConvGeometry& g, int64_t nnz) {
  char text[512];
  std::snprintf(text, sizeof(text),
                "N=%ld H=%ld W=%ld C=%ld K=%ld R=%ld S=%ld P=%ld Q=%ld "
                "stride=%ld,%ld dilation=%ld,%ld pad=%ld,%ld,%ld,%ld %s nnz=%ld",
                long(g.N), long(g.H), long(g.W), long(g.C), long(g.K),
                long(g.R), long(g.S), long(g.P), long(g.Q), long(g.stride_h),
                long(g.stride_w), long(g.dilation_h), long(g.dilation_w),
                long(g.pad_top), long(g.pad_bottom), long(g.pad_left),
                long(g.pad_right),
                g.data_format == DataFormat::kNHWC ? "NHWC" : "NCHW",
                long(nnz));
  return text;
}

// ComputeOutputSize exactly as the shape function calls it: the input size
// is a known graph dimension (>= 0, any size), the rest are attributes that
// ParseCsrConvAttrs checked for sign only.
void FuzzOutputSize(FuzzedDataProvider& fdp) {
  const int64_t input_size = std::max<int64_t>(0, SmallOrWild(fdp, 0, 20));
  const int64_t filter = std::max<int64_t>(1, SmallOrWild(fdp, 1, 7));
  const int64_t stride = std::max<int64_t>(1, SmallOrWild(fdp, 1, 4));
  const int64_t dilation = std::max<int64_t>(1, SmallOrWild(fdp, 1, 3));
  const int64_t before = std::max<int64_t>(0, SmallOrWild(fdp, 0, 4));
  const int64_t after = std::max<int64_t>(0, SmallOrWild(fdp, 0, 4));
  const Padding padding = fdp.PickValueInArray(
      {Padding::kSame, Padding::kValid, Padding::kExplicit});
  int64_t out = -7, pad_before = -7, pad_after = -7;
  const std::string error =
      ComputeOutputSize("height", input_size, filter, stride, dilation, padding,
                        before, after, &out, &pad_before, &pad_after);
  // The shape function hands `out` to MakeDim: it must be a real size.
  if (error.empty() && out < 0) {
    Die("ComputeOutputSize returned a negative size without an error",
        std::to_string(out));
  }
}

// The CSR contract of csr_conv.h, written independently of csr_validate.cc.
bool CsrIsValid(int64_t rows, int64_t columns,
                const std::vector<int32_t>& row_offsets,
                const std::vector<int32_t>& column_indices,
                int64_t num_values) {
  if (static_cast<int64_t>(row_offsets.size()) != rows + 1) return false;
  const int64_t nnz = static_cast<int64_t>(column_indices.size());
  if (row_offsets.front() != 0 || row_offsets.back() != nnz) return false;
  if (num_values != nnz) return false;
  for (int64_t k = 0; k < rows; ++k) {
    if (row_offsets[k + 1] < row_offsets[k]) return false;
  }
  for (int64_t k = 0; k < rows; ++k) {
    for (int64_t i = row_offsets[k]; i < row_offsets[k + 1]; ++i) {
      if (column_indices[i] < 0 || column_indices[i] >= columns) return false;
      if (i > row_offsets[k] && column_indices[i] <= column_indices[i - 1]) {
        return false;
      }
    }
  }
  return true;
}

struct Csr {
  std::vector<int32_t> row_offsets, column_indices;
  int64_t num_values = 0;
  bool built_valid = false;  // constructed to satisfy the contract
};

Csr MakeCsr(FuzzedDataProvider& fdp, std::minstd_rand& rng, int64_t rows,
            int64_t columns) {
  Csr csr;
  const int mode = fdp.ConsumeIntegralInRange<int>(0, 7);
  if (mode <= 5) {
    // Valid: a random mask with a fuzzed density, some rows forced empty.
    const int density = fdp.ConsumeIntegralInRange<int>(0, 16);
    csr.row_offsets.push_back(0);
    for (int64_t k = 0; k < rows; ++k) {
      const bool empty_row = fdp.ConsumeIntegralInRange<int>(0, 7) == 0;
      for (int64_t j = 0; j < columns && !empty_row; ++j) {
        if (static_cast<int>(rng() % 16) < density) {
          csr.column_indices.push_back(static_cast<int32_t>(j));
        }
      }
      csr.row_offsets.push_back(static_cast<int32_t>(csr.column_indices.size()));
    }
    csr.num_values = static_cast<int64_t>(csr.column_indices.size());
    csr.built_valid = true;
    if (mode >= 4) {
      // One mutation, the kind of corruption a bad converter makes.
      csr.built_valid = false;
      // Added modulo 2^32: any int32 can result, and no UB in the fuzzer.
      const uint32_t delta = static_cast<uint32_t>(
          fdp.ConsumeBool() ? SmallOrWild(fdp, -3, 3) : 0);
      switch (fdp.ConsumeIntegralInRange<int>(0, 5)) {
        case 0: {
          const size_t at =
              fdp.ConsumeIntegralInRange<size_t>(0, csr.row_offsets.size() - 1);
          csr.row_offsets[at] = static_cast<int32_t>(
              static_cast<uint32_t>(csr.row_offsets[at]) + delta);
          break;
        }
        case 1:
          if (!csr.column_indices.empty()) {
            const size_t at = fdp.ConsumeIntegralInRange<size_t>(
                0, csr.column_indices.size() - 1);
            csr.column_indices[at] = static_cast<int32_t>(
                static_cast<uint32_t>(csr.column_indices[at]) + delta);
          }
          break;
        case 2:
          csr.num_values += fdp.ConsumeIntegralInRange<int>(-1, 1);
          break;
        case 3:
          if (fdp.ConsumeBool() && csr.row_offsets.size() > 1) {
            csr.row_offsets.pop_back();
          } else {
            csr.row_offsets.push_back(csr.row_offsets.back());
          }
          break;
        case 4:
          if (fdp.ConsumeBool() && !csr.column_indices.empty()) {
            csr.column_indices.pop_back();
          } else {
            csr.column_indices.push_back(static_cast<int32_t>(columns - 1));
          }
          break;
        case 5:
          if (csr.column_indices.size() >= 2) {
            std::swap(csr.column_indices.front(), csr.column_indices.back());
          }
          break;
      }
    }
  } else {
    // Raw: lengths and entries straight from the fuzzer.
    const size_t num_offsets =
        fdp.ConsumeIntegralInRange<size_t>(1, static_cast<size_t>(rows) + 2);
    for (size_t i = 0; i < num_offsets; ++i) {
      csr.row_offsets.push_back(
          static_cast<int32_t>(SmallOrWild(fdp, -1, 12)));
    }
    const size_t nnz = fdp.ConsumeIntegralInRange<size_t>(0, 16);
    for (size_t i = 0; i < nnz; ++i) {
      csr.column_indices.push_back(
          static_cast<int32_t>(SmallOrWild(fdp, -1, columns)));
    }
    csr.num_values = static_cast<int64_t>(nnz) + fdp.ConsumeIntegralInRange<int>(-1, 1);
  }
  return csr;
}

float RandomValue(std::minstd_rand& rng, float scale) {
  return scale * (static_cast<float>(rng() % 2001) / 1000.0f - 1.0f);
}

void RunKernels(FuzzedDataProvider& fdp, std::minstd_rand& rng,
                const ConvGeometry& g, const Csr& csr, Activation activation) {
  const int64_t nnz = csr.row_offsets.back();
  const std::string context = Describe(g, nnz);
  // Set when replaying an artifact, to see the case a crash or hang hit.
  if (std::getenv("ESCORT_FUZZ_VERBOSE") != nullptr) {
    std::fprintf(stderr, "running %s\n", context.c_str());
  }
  std::vector<float> input(g.InputSize());
  for (float& x : input) x = RandomValue(rng, 4.0f);
  // Non-finite inputs: outputs reading them must be non-finite in both
  // kernels alike, since both read only in-bounds inputs of stored taps.
  if (!input.empty() && fdp.ConsumeIntegralInRange<int>(0, 3) == 0) {
    const int count = fdp.ConsumeIntegralInRange<int>(1, 3);
    for (int i = 0; i < count; ++i) {
      const float special = fdp.PickValueInArray(
          {std::numeric_limits<float>::quiet_NaN(),
           std::numeric_limits<float>::infinity(),
           -std::numeric_limits<float>::infinity()});
      input[rng() % input.size()] = special;
    }
  }
  // Finite weights only: at a tap in the padding the CPU kernel computes
  // 0 * Inf = NaN where the reference skips the tap (docs/robustness.md).
  std::vector<float> values(nnz);
  for (float& v : values) v = RandomValue(rng, 2.0f);
  std::vector<float> bias;
  if (fdp.ConsumeBool()) {
    bias.resize(g.K);
    for (float& b : bias) b = RandomValue(rng, 4.0f);
  }
  const float* bias_ptr = bias.empty() ? nullptr : bias.data();

  std::vector<float> expected(g.OutputSize());
  CsrConv2DReference(g, input.data(), csr.row_offsets.data(),
                     csr.column_indices.data(), values.data(), bias_ptr,
                     activation, expected.data());

  // Each term is at most 4 * 2 in magnitude; float error grows at most
  // linearly with the number of terms of an output (its row's nonzeros).
  int64_t max_row = 0;
  for (int64_t k = 0; k < g.K; ++k) {
    max_row = std::max<int64_t>(max_row,
                                csr.row_offsets[k + 1] - csr.row_offsets[k]);
  }
  const float tolerance = 8.0f * 1.2e-7f * static_cast<float>(max_row + 4);

  float unwritten;
  std::memcpy(&unwritten, &kUnwritten, sizeof(unwritten));
  auto run = [&](internal::CpuIsa isa, const ParallelFor& parallel_for) {
    std::vector<float> output(g.OutputSize(), unwritten);
    internal::CsrConv2DCpuWithIsa(isa, g, input.data(), csr.row_offsets.data(),
                                  csr.column_indices.data(), values.data(),
                                  bias_ptr, activation, output.data(),
                                  parallel_for);
    return output;
  };

  // A deterministic, fuzzer-chosen partition of the work units, run in
  // reverse: what a thread pool could do, minus the nondeterminism.
  const uint32_t split_seed = fdp.ConsumeIntegral<uint32_t>();
  const ParallelFor shuffled_split =
      [split_seed](int64_t num_units, int64_t cost,
                   const std::function<void(int64_t, int64_t)>& work) {
        if (cost < 0) Die("negative cost per unit", std::to_string(cost));
        std::minstd_rand split_rng(split_seed | 1);
        std::vector<int64_t> cuts = {0, num_units};
        for (int i = 0; i < 3 && num_units > 1; ++i) {
          cuts.push_back(static_cast<int64_t>(split_rng() % num_units));
        }
        std::sort(cuts.begin(), cuts.end());
        for (size_t i = cuts.size() - 1; i > 0; --i) {
          if (cuts[i - 1] < cuts[i]) work(cuts[i - 1], cuts[i]);
        }
      };

  for (internal::CpuIsa isa : {internal::CpuIsa::kScalar,
                               internal::CpuIsa::kAvx2,
                               internal::CpuIsa::kAvx512}) {
    if (!internal::CpuSupportsIsa(isa)) continue;
    const std::string name = internal::CpuIsaName(isa);
    const std::vector<float> serial = run(isa, ParallelFor());
    for (int64_t i = 0; i < g.OutputSize(); ++i) {
      uint32_t bits;
      std::memcpy(&bits, &serial[i], sizeof(bits));
      if (bits == kUnwritten) {
        Die(name + ": output " + std::to_string(i) + " never written", context);
      }
      const float a = serial[i], e = expected[i];
      const bool same_class = std::isnan(a) == std::isnan(e) &&
                              (std::isinf(a) ? a == e : !std::isinf(e));
      if (!same_class || (std::isfinite(a) && !(std::fabs(a - e) <= tolerance))) {
        Die(name + ": output " + std::to_string(i) + " = " + std::to_string(a) +
                " but the reference gives " + std::to_string(e),
            context);
      }
    }
    const std::vector<float> split = run(isa, shuffled_split);
    if (!serial.empty() &&
        std::memcmp(split.data(), serial.data(),
                    serial.size() * sizeof(float)) != 0) {
      Die(name + ": a different split of the work changed the output bits",
          context);
    }
  }
}

void FuzzOne(FuzzedDataProvider& fdp) {
  ++stats.inputs;
  FuzzOutputSize(fdp);

  const int64_t N = SmallOrWild(fdp, 0, 3);
  const int64_t H = SmallOrWild(fdp, 0, 12);
  const int64_t W = SmallOrWild(fdp, 0, 12);
  const int64_t C = SmallOrWild(fdp, 0, 6);
  const int64_t R = SmallOrWild(fdp, 1, 5);
  const int64_t S = SmallOrWild(fdp, 1, 5);
  const int64_t filter_in = fdp.ConsumeIntegralInRange<int>(0, 15) == 0
                                ? SmallOrWild(fdp, 0, 6)
                                : C;
  const int64_t K = SmallOrWild(fdp, 1, 8);
  ConvAttrs attrs;
  attrs.stride_h = SmallOrWild(fdp, 1, 4);
  attrs.stride_w = SmallOrWild(fdp, 1, 4);
  attrs.dilation_h = SmallOrWild(fdp, 1, 3);
  attrs.dilation_w = SmallOrWild(fdp, 1, 3);
  attrs.padding = fdp.PickValueInArray(
      {Padding::kSame, Padding::kValid, Padding::kExplicit});
  attrs.explicit_top = SmallOrWild(fdp, 0, 4);
  attrs.explicit_bottom = SmallOrWild(fdp, 0, 4);
  attrs.explicit_left = SmallOrWild(fdp, 0, 4);
  attrs.explicit_right = SmallOrWild(fdp, 0, 4);
  attrs.data_format =
      fdp.ConsumeBool() ? DataFormat::kNHWC : DataFormat::kNCHW;
  const Activation activation = fdp.PickValueInArray(
      {Activation::kNone, Activation::kRelu, Activation::kRelu6});

  ConvGeometry g;
  const std::string geometry_error =
      ComputeConvGeometry(N, H, W, C, R, S, filter_in, K, attrs, &g);
  if (!geometry_error.empty()) return;
  ++stats.valid_geometry;
  // What the kernels rely on, whatever the inputs were.
  if (g.P < 0 || g.Q < 0 || g.InputSize() > kInt32Max ||
      g.OutputSize() > kInt32Max || g.FilterColumns() > kInt32Max ||
      g.pad_top < 0 || g.pad_left < 0) {
    Die("accepted geometry breaks the kernels' assumptions", Describe(g, 0));
  }

  std::minstd_rand rng(fdp.ConsumeIntegral<uint32_t>() | 1);
  // The per-row mask costs R*S*C draws per row: keep it small.
  if (g.K * g.FilterColumns() > 4096) return;
  const Csr csr = MakeCsr(fdp, rng, g.K, g.FilterColumns());
  const std::string csr_error = ValidateCsrFilter(
      g.K, g.FilterColumns(), csr.row_offsets.data(),
      static_cast<int64_t>(csr.row_offsets.size()), csr.column_indices.data(),
      static_cast<int64_t>(csr.column_indices.size()), csr.num_values);
  const bool valid = CsrIsValid(g.K, g.FilterColumns(), csr.row_offsets,
                                csr.column_indices, csr.num_values);
  if (valid != csr_error.empty()) {
    Die(valid ? "ValidateCsrFilter rejected a valid filter: " + csr_error
              : "ValidateCsrFilter accepted an invalid filter",
        Describe(g, static_cast<int64_t>(csr.column_indices.size())));
  }
  if (csr.built_valid && !valid) Die("fuzzer built an invalid filter", "");
  if (!valid) return;
  ++stats.valid_filter;

  // The reference loops over N * P * Q * K even when some factor is 0.
  if (g.InputSize() > kMaxRunElements || g.OutputSize() > kMaxRunElements ||
      double(g.N) * double(g.P + 1) * double(g.Q + 1) * double(g.K) >
          kMaxRunElements) {
    return;
  }
  // The CPU kernel fills, per output row, a buffer spanning the dilated
  // window's halo, so its work grows with dilation / stride even for a tiny
  // output (reported separately). Skip those, or they eat the time budget.
  const double halo_h = double((g.R - 1) * g.dilation_h / g.stride_h);
  const double halo_w = double((g.S - 1) * g.dilation_w / g.stride_w);
  if (double(g.N) * double(g.P) * (1 + halo_h) * (double(g.Q) + halo_w) *
          double(g.C) * double(g.stride_h * g.stride_w) > 1 << 20) {
    return;
  }
  ++stats.kernels_run;
  RunKernels(fdp, rng, g, csr, activation);
}

}  // namespace
}  // namespace escort

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider fdp(data, size);
  escort::FuzzOne(fdp);
  return 0;
}
