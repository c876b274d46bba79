// Checks CsrConv2DCpu against CsrConv2DReference over random and edge-case
// geometries, on every ISA path this CPU supports, and checks that the result
// does not depend on how ParallelFor splits the work.
//
// Build (or `make test-cc`): g++ -std=c++17 -O3 -I.
//   cc/kernels/csr_conv_cpu_test.cc cc/kernels/csr_conv_cpu.cc
//   cc/kernels/csr_conv_cpu_x86.cc cc/kernels/csr_validate.cc
//   cc/kernels/csr_conv_reference.cc -lpthread
// Usage: csr_conv_cpu_test [random cases, default 400]. Exit status is
// nonzero when any case fails.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cc/kernels/csr_conv.h"
#include "cc/kernels/csr_conv_cpu_internal.h"

namespace escort {
namespace {

using internal::CpuIsa;

struct Case {
  int64_t N, H, W, C, K, R, S;
  ConvAttrs attrs;
  double density;
  bool bias;
  Activation activation;
  // Every 7th input element NaN: the NaNs must reach exactly the outputs
  // the reference gives NaN, through bias and activation alike.
  bool nan_inputs = false;
  // The plan must split the filter's rows into input-channel blocks on
  // every ISA, so that the case keeps covering that path if its thresholds
  // change.
  bool channel_blocks = false;
};

struct Csr {
  std::vector<int32_t> row_offsets, column_indices;
  std::vector<float> values;
};

// Splits [0, num_units) into `threads` near-equal ranges on std::threads,
// the way a pool would, so the kernel sees real concurrency.
ParallelFor ThreadParallelFor(int threads) {
  return [threads](int64_t num_units, int64_t,
                   const std::function<void(int64_t, int64_t)>& work) {
    RunOnThreads(num_units, threads, work);
  };
}

// One unit per call, last unit first: the most adversarial split.
void ReversedParallelFor(int64_t num_units, int64_t,
                         const std::function<void(int64_t, int64_t)>& work) {
  for (int64_t unit = num_units - 1; unit >= 0; --unit) work(unit, unit + 1);
}

Csr RandomCsr(std::mt19937& rng, int64_t rows, int64_t columns,
              double density) {
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  Csr csr;
  csr.row_offsets.push_back(0);
  for (int64_t row = 0; row < rows; ++row) {
    // Every few rows is empty whatever the density.
    const bool empty = coin(rng) < 0.1;
    for (int64_t column = 0; column < columns; ++column) {
      if (!empty && coin(rng) < density) {
        csr.column_indices.push_back(static_cast<int32_t>(column));
        csr.values.push_back(value(rng));
      }
    }
    csr.row_offsets.push_back(static_cast<int32_t>(csr.values.size()));
  }
  return csr;
}

const char* ActivationName(Activation activation) {
  switch (activation) {
    case Activation::kNone: return "none";
    case Activation::kRelu: return "relu";
    case Activation::kRelu6: return "relu6";
  }
  return "?";
}

std::string Describe(const Case& c, const ConvGeometry& g) {
  char text[400];
  std::snprintf(text, sizeof(text),
                "N%lld H%lld W%lld C%lld K%lld R%lld S%lld stride %lldx%lld "
                "dilation %lldx%lld pad t%lld b%lld l%lld r%lld -> P%lld Q%lld "
                "%s density %.2f bias %d act %s",
                (long long)c.N, (long long)c.H, (long long)c.W, (long long)c.C,
                (long long)c.K, (long long)c.R, (long long)c.S,
                (long long)g.stride_h, (long long)g.stride_w,
                (long long)g.dilation_h, (long long)g.dilation_w,
                (long long)g.pad_top, (long long)g.pad_bottom,
                (long long)g.pad_left, (long long)g.pad_right, (long long)g.P,
                (long long)g.Q,
                g.data_format == DataFormat::kNHWC ? "NHWC" : "NCHW",
                c.density, c.bias, ActivationName(c.activation));
  return text;
}

int passed = 0, failed = 0;

void Fail(const std::string& what, const std::string& description) {
  ++failed;
  if (failed <= 20) {
    std::printf("FAIL %s: %s\n", what.c_str(), description.c_str());
  }
}

// Runs one case on every supported ISA and split. Returns false when the
// geometry is rejected (not a test failure: the op would reject it too).
bool RunCase(std::mt19937& rng, const Case& c) {
  ConvGeometry g;
  const std::string error =
      ComputeConvGeometry(c.N, c.H, c.W, c.C, c.R, c.S, c.C, c.K, c.attrs, &g);
  if (!error.empty()) return false;
  const Csr csr = RandomCsr(rng, g.K, g.FilterColumns(), c.density);
  const std::string csr_error = ValidateCsrFilter(
      g.K, g.FilterColumns(), csr.row_offsets.data(),
      static_cast<int64_t>(csr.row_offsets.size()), csr.column_indices.data(),
      static_cast<int64_t>(csr.column_indices.size()),
      static_cast<int64_t>(csr.values.size()));
  if (!csr_error.empty()) {
    Fail("generated an invalid filter (" + csr_error + ")", Describe(c, g));
    return true;
  }
  if (c.channel_blocks) {
    for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
      if (internal::CpuSupportsIsa(isa) &&
          internal::CpuInputChannelBlocks(isa, g, csr.row_offsets.data(),
                                          csr.column_indices.data()) < 2) {
        Fail(std::string(internal::CpuIsaName(isa)) +
                 " does not use input-channel blocks here",
             Describe(c, g));
      }
    }
  }
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> input(g.InputSize());
  for (float& x : input) x = uniform(rng);
  if (c.nan_inputs) {
    for (size_t i = 0; i < input.size(); i += 7) input[i] = std::nanf("");
  }
  std::vector<float> bias(g.K);
  // Large enough that relu6 clips some outputs at both ends.
  for (float& b : bias) b = 4.0f * uniform(rng);
  const float* bias_ptr = c.bias ? bias.data() : nullptr;

  std::vector<float> expected(g.OutputSize());
  CsrConv2DReference(g, input.data(), csr.row_offsets.data(),
                     csr.column_indices.data(), csr.values.data(), bias_ptr,
                     c.activation, expected.data());
  int64_t max_row = 0;
  for (int64_t k = 0; k < g.K; ++k) {
    max_row = std::max<int64_t>(max_row,
                                csr.row_offsets[k + 1] - csr.row_offsets[k]);
  }
  // Terms lie in [-1, 1]; float error grows at most linearly with their count.
  const float tolerance = 1e-6f * static_cast<float>(max_row + 8);

  const std::string description = Describe(c, g);
  for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (!internal::CpuSupportsIsa(isa)) continue;
    const std::string name = internal::CpuIsaName(isa);
    // NaN-filled so that an output the kernel skips cannot pass.
    std::vector<float> serial(g.OutputSize(), std::nanf(""));
    internal::CsrConv2DCpuWithIsa(isa, g, input.data(), csr.row_offsets.data(),
                                  csr.column_indices.data(), csr.values.data(),
                                  bias_ptr, c.activation, serial.data(),
                                  ParallelFor());
    bool ok = true;
    for (int64_t i = 0; i < g.OutputSize() && ok; ++i) {
      const bool both_nan = std::isnan(serial[i]) && std::isnan(expected[i]);
      if (!both_nan && !(std::fabs(serial[i] - expected[i]) <= tolerance)) {
        Fail(name + " differs from the reference at " + std::to_string(i) +
                 ": " + std::to_string(serial[i]) + " vs " +
                 std::to_string(expected[i]),
             description);
        ok = false;
      }
    }
    if (ok) ++passed;

    const ParallelFor splits[] = {ThreadParallelFor(2), ThreadParallelFor(3),
                                  ReversedParallelFor};
    for (const ParallelFor& split : splits) {
      std::vector<float> threaded(g.OutputSize(), std::nanf(""));
      internal::CsrConv2DCpuWithIsa(
          isa, g, input.data(), csr.row_offsets.data(),
          csr.column_indices.data(), csr.values.data(), bias_ptr,
          c.activation, threaded.data(), split);
      if (!serial.empty() &&
          std::memcmp(threaded.data(), serial.data(),
                      serial.size() * sizeof(float)) != 0) {
        Fail(name + " multi-threaded result is not bit-identical", description);
      } else {
        ++passed;
      }
    }
  }
  return true;
}

Case RandomCase(std::mt19937& rng) {
  auto pick = [&rng](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  Case c;
  c.N = pick(1, 8);
  c.H = pick(1, 17);
  c.W = pick(1, 23);
  if (pick(0, 7) == 0) c.H = 1;
  if (pick(0, 7) == 0) c.W = 1;
  c.C = pick(0, 3) == 0 ? 1 : pick(1, 40);
  c.K = pick(1, 40);
  c.R = pick(1, 7);
  c.S = pick(0, 2) == 0 ? c.R : pick(1, 7);
  c.attrs.stride_h = pick(1, 3);
  c.attrs.stride_w = pick(1, 3);
  c.attrs.dilation_h = pick(1, 2);
  c.attrs.dilation_w = pick(1, 2);
  switch (pick(0, 2)) {
    case 0: c.attrs.padding = Padding::kSame; break;
    case 1: c.attrs.padding = Padding::kValid; break;
    default:
      c.attrs.padding = Padding::kExplicit;
      c.attrs.explicit_top = pick(0, 4);
      c.attrs.explicit_bottom = pick(0, 4);
      c.attrs.explicit_left = pick(0, 4);
      c.attrs.explicit_right = pick(0, 4);
  }
  c.attrs.data_format = pick(0, 1) ? DataFormat::kNHWC : DataFormat::kNCHW;
  const double densities[] = {0.0, 0.01, 0.05, 0.1, 0.3, 0.6, 1.0};
  c.density = densities[pick(0, 6)];
  c.bias = pick(0, 1) == 1;
  c.activation = static_cast<Activation>(pick(0, 2));
  // Keep the double-precision reference fast.
  while (c.N * c.H * c.W * c.K * c.R * c.S * c.C * c.density > 4e6) {
    c.N = std::max<int64_t>(1, c.N / 2);
    c.C = std::max<int64_t>(1, c.C / 2);
  }
  return c;
}

Case Basic(int64_t N, int64_t H, int64_t W, int64_t C, int64_t K, int64_t R,
           int64_t S, Padding padding, double density) {
  Case c{N, H, W, C, K, R, S, ConvAttrs(), density, true, Activation::kNone};
  c.attrs.padding = padding;
  return c;
}

void RunEdgeCases(std::mt19937& rng) {
  std::vector<Case> cases = {
      Basic(0, 5, 5, 3, 4, 3, 3, Padding::kSame, 0.5),    // empty batch
      Basic(2, 0, 5, 3, 4, 3, 3, Padding::kSame, 0.5),    // empty height
      Basic(2, 5, 0, 3, 4, 3, 3, Padding::kSame, 0.5),    // empty width
      Basic(1, 1, 1, 1, 1, 1, 1, Padding::kValid, 1.0),   // 1x1 everything
      Basic(3, 1, 1, 5, 7, 7, 7, Padding::kSame, 0.8),    // 1x1 image, 7x7
      Basic(2, 3, 2, 4, 9, 7, 5, Padding::kSame, 1.0),    // filter > input
      Basic(2, 6, 7, 8, 5, 3, 3, Padding::kSame, 0.0),    // all-zero filter
      Basic(1, 9, 9, 16, 33, 3, 3, Padding::kSame, 1.0),  // dense
      Basic(8, 14, 14, 24, 40, 3, 3, Padding::kSame, 0.1),
      Basic(1, 28, 28, 16, 20, 5, 5, Padding::kValid, 0.2),
      Basic(2, 40, 3, 6, 5, 3, 1, Padding::kSame, 0.5),   // tall, narrow
      Basic(2, 3, 70, 6, 5, 1, 3, Padding::kSame, 0.5),   // short, wide
      // More filter columns than the stretch table allows for so few
      // nonzeros: the per-nonzero decode path.
      Basic(2, 9, 8, 128, 6, 7, 7, Padding::kSame, 0.01),
      // Wide rows of many channels: several bands per image, so bands that
      // start mid-image and a short last band.
      Basic(2, 20, 60, 256, 8, 3, 3, Padding::kSame, 0.05),
      Basic(1, 23, 41, 600, 5, 5, 5, Padding::kValid, 0.01),
      // Dense rows: one tile of output channels per block.
      Basic(1, 9, 11, 64, 70, 5, 5, Padding::kSame, 0.9),
  };
  {
    Case c = Basic(2, 3, 4, 3, 5, 3, 3, Padding::kExplicit, 0.7);
    c.attrs.explicit_top = 20;  // huge padding: mostly bias-only output
    c.attrs.explicit_bottom = 1;
    c.attrs.explicit_left = 0;
    c.attrs.explicit_right = 17;
    c.activation = Activation::kRelu6;
    cases.push_back(c);
  }
  {
    Case c = Basic(2, 31, 47, 300, 6, 3, 3, Padding::kSame, 0.03);
    c.attrs.stride_h = 2;  // bands of a strided, dilated layer
    c.attrs.stride_w = 2;
    c.attrs.dilation_h = 2;
    c.attrs.dilation_w = 3;
    cases.push_back(c);
  }
  {
    Case c = Basic(3, 11, 13, 7, 9, 3, 3, Padding::kSame, 0.4);
    c.attrs.stride_h = 3;
    c.attrs.stride_w = 2;
    c.attrs.dilation_h = 2;
    c.attrs.dilation_w = 2;
    cases.push_back(c);
  }
  {
    // A band buffer of ~1 GB: the bounded-memory direct fallback.
    Case c = Basic(2, 6, 5, 4, 6, 3, 2, Padding::kSame, 0.6);
    c.attrs.dilation_h = 10000000;
    c.attrs.dilation_w = 2;
    c.activation = Activation::kRelu;
    cases.push_back(c);
  }
  {
    // Large images: rows reordered by blocks of input channels, each
    // output continued block by block in the tile.
    Case c = Basic(2, 36, 62, 64, 8, 3, 3, Padding::kSame, 0.5);
    c.channel_blocks = true;
    cases.push_back(c);
    c = Basic(3, 40, 30, 16, 8, 5, 5, Padding::kSame, 0.5);
    c.attrs.dilation_h = 2;
    c.attrs.dilation_w = 2;
    c.activation = Activation::kRelu6;
    c.channel_blocks = true;
    cases.push_back(c);
  }
  for (Activation activation :
       {Activation::kNone, Activation::kRelu, Activation::kRelu6}) {
    Case c = Basic(2, 9, 13, 12, 20, 3, 3, Padding::kSame, 0.3);
    c.activation = activation;
    c.nan_inputs = true;
    cases.push_back(c);
  }
  for (Case c : cases) {
    for (DataFormat format : {DataFormat::kNHWC, DataFormat::kNCHW}) {
      c.attrs.data_format = format;
      if (!RunCase(rng, c)) {
        Fail("edge case rejected by ComputeConvGeometry", "");
      }
    }
  }
}

}  // namespace
}  // namespace escort

int main(int argc, char** argv) {
  const int random_cases = argc > 1 ? std::atoi(argv[1]) : 400;
  std::mt19937 rng(20261125);
  std::printf("selected ISA: %s\n",
              escort::internal::CpuIsaName(escort::internal::SelectedCpuIsa()));
  escort::RunEdgeCases(rng);
  for (int i = 0; i < random_cases;) {
    if (escort::RunCase(rng, escort::RandomCase(rng))) ++i;
  }
  std::printf("%d passed, %d failed\n", escort::passed, escort::failed);
  return escort::failed == 0 ? 0 : 1;
}
