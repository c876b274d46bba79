// Standalone test of Sparse24Conv2DGpu against CsrConv2DReference (double
// accumulation over the same 16-bit-rounded inputs and weights). No
// framework: build with
//   cc/kernels/build_sparse24_gpu.sh OUTDIR
//   OUTDIR/sparse24_conv_gpu_test [num_random_cases] [seed]
// On Hopper every case runs the wgmma kernel (each also with the split-K
// workspace where it asks for one), loading with the copy engine (TMA) where
// C >= 64 and with cp.async otherwise; the test fails if neither path ran.
// A build with ESCORT_TF_SPARSE24_WGMMA=0 runs the mma.sp kernel there, as
// other GPUs do.
// Named cases first (1x1, 7x7, width 1, batch 1, K not a multiple of 16 or
// 8, strides, dilations, all paddings, activations, each block shape), then
// random ones, each
// in float16 and bfloat16, with groups of 0, 1 and 2 nonzeros. Outputs are
// poisoned with NaN first; every launch's status is checked.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

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
#include "cc/kernels/cuda_check_test.h"
#include "cc/kernels/sparse24_conv.h"
#include "cc/kernels/sparse24_conv_gpu.h"
#include "cc/kernels/sparse24_conv_wgmma.h"

namespace escort {
namespace {

struct Case {
  std::string name;
  int64_t N, H, W, C, K, R, S;
  ConvAttrs attrs;
  bool bias;
  Activation activation;
  // On Hopper: 1 if the wgmma kernel must load this case with TMA, 0 if it
  // must fall back to cp.async, -1 either.
  int expect_tma = -1;
};

// 16-bit bits of `v` in `type`, and the float they stand for.
uint16_t ToBits(HalfType type, float v, float* rounded) {
  uint16_t bits;
  if (type == HalfType::kFloat16) {
    const __half h = __float2half_rn(v);
    *rounded = __half2float(h);
    std::memcpy(&bits, &h, 2);
  } else {
    const __nv_bfloat16 h = __float2bfloat16_rn(v);
    *rounded = __bfloat162float(h);
    std::memcpy(&bits, &h, 2);
  }
  return bits;
}

float FromBits(HalfType type, uint16_t bits) {
  if (type == HalfType::kFloat16) {
    __half h;
    std::memcpy(&h, &bits, 2);
    return __half2float(h);
  }
  __nv_bfloat16 h;
  std::memcpy(&h, &bits, 2);
  return __bfloat162float(h);
}

template <typename T>
T* ToDevice(const std::vector<T>& v) {
  T* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, std::max<size_t>(1, v.size()) * sizeof(T)));
  if (!v.empty()) {
    CHECK_CUDA(cudaMemcpy(d, v.data(), v.size() * sizeof(T),
                          cudaMemcpyHostToDevice));
  }
  return d;
}

bool RunCase(const Case& c, HalfType type, std::mt19937* rng,
             cudaStream_t stream) {
  const char* type_name = type == HalfType::kFloat16 ? "f16" : "bf16";
  ConvGeometry g;
  const std::string err = ComputeConvGeometry(c.N, c.H, c.W, c.C, c.R, c.S,
                                              c.C, c.K, c.attrs, &g);
  if (!err.empty()) return true;  // not a valid conv: nothing to test
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  std::uniform_int_distribution<int> kept_count(0, 2), position(0, 3);

  // A 2:4 filter: 0, 1 or 2 nonzeros at random positions of each group.
  const int64_t cols = g.FilterColumns();
  std::vector<int32_t> row_offsets(g.K + 1, 0), column_indices;
  std::vector<float> values;
  std::vector<uint16_t> value_bits;
  for (int64_t k = 0; k < g.K; ++k) {
    for (int64_t group = 0; group < cols / 4; ++group) {
      bool keep[4] = {false, false, false, false};
      for (int n = kept_count(*rng); n > 0;) {
        const int pos = position(*rng);
        if (!keep[pos]) {
          keep[pos] = true;
          --n;
        }
      }
      for (int pos = 0; pos < 4; ++pos) {
        if (!keep[pos]) continue;
        float rounded;
        value_bits.push_back(ToBits(type, uni(*rng), &rounded));
        values.push_back(rounded);
        column_indices.push_back(static_cast<int32_t>(group * 4 + pos));
      }
    }
    row_offsets[k + 1] = static_cast<int32_t>(column_indices.size());
  }
  Sparse24Layout layout;
  const std::string layout_error =
      BuildSparse24Layout(g.K, g.R, g.S, g.C, row_offsets.data(),
                          column_indices.data(), &layout);
  if (!layout_error.empty()) {
    std::fprintf(stderr, "%s: %s\n", c.name.c_str(), layout_error.c_str());
    return false;
  }

  std::vector<float> input(g.InputSize()), bias(g.K), abs_input(g.InputSize());
  std::vector<uint16_t> input_bits(g.InputSize()), bias_bits(g.K);
  for (int64_t i = 0; i < g.InputSize(); ++i) {
    input_bits[i] = ToBits(type, uni(*rng), &input[i]);
    abs_input[i] = std::fabs(input[i]);
  }
  for (int64_t k = 0; k < g.K; ++k) bias_bits[k] = ToBits(type, uni(*rng), &bias[k]);
  std::vector<float> expect(g.OutputSize()), magnitude(g.OutputSize()),
      abs_values(values.size()), abs_bias(g.K);
  for (size_t i = 0; i < values.size(); ++i) abs_values[i] = std::fabs(values[i]);
  for (int64_t k = 0; k < g.K; ++k) abs_bias[k] = std::fabs(bias[k]);
  CsrConv2DReference(g, input.data(), row_offsets.data(), column_indices.data(),
                     values.data(), c.bias ? bias.data() : nullptr,
                     c.activation, expect.data());
  // Sum of |terms| per output: bounds the fp32 summation error.
  CsrConv2DReference(g, abs_input.data(), row_offsets.data(),
                     column_indices.data(), abs_values.data(),
                     c.bias ? abs_bias.data() : nullptr, Activation::kNone,
                     magnitude.data());

  uint16_t* d_in = ToDevice(input_bits);
  uint16_t* d_values = ToDevice(value_bits);
  uint16_t* d_bias = ToDevice(bias_bits);
  int32_t* d_index = ToDevice(layout.value_index);
  uint32_t* d_meta = ToDevice(layout.metadata);
  uint16_t* d_packed = nullptr;
  CHECK_CUDA(cudaMalloc(&d_packed, std::max<int64_t>(1, layout.NumPackedValues()) * 2));
  std::vector<uint16_t> poison(g.OutputSize(), 0x7fff);  // NaN in both types
  uint16_t* d_out = ToDevice(poison);
  CHECK_CUDA(PackSparse24ValuesGpu(d_index, layout.NumPackedValues(), d_values,
                                   d_packed, stream));
  // Without a workspace, then with the one the launcher asks for (split-K
  // where the grid is small), each into a freshly poisoned output.
  size_t workspace_bytes = 0;
  CHECK_CUDA(Sparse24WorkspaceBytes(g, &workspace_bytes));
  void* d_workspace = nullptr;
  if (workspace_bytes > 0) CHECK_CUDA(cudaMalloc(&d_workspace, workspace_bytes));

  // One rounding to the 16-bit type, plus fp32 summation error.
  const double rounding = type == HalfType::kFloat16 ? std::ldexp(1.0, -11)
                                                     : std::ldexp(1.0, -8);
  bool ok = true;
  for (const bool split : {false, true}) {
    if (split && workspace_bytes == 0) break;
    const char* how = split ? "split-K" : "whole";
    CHECK_CUDA(cudaMemcpy(d_out, poison.data(), poison.size() * 2, cudaMemcpyHostToDevice));
    CHECK_CUDA(Sparse24Conv2DGpu(type, g, d_in, d_packed, d_meta, c.bias ? d_bias : nullptr,
                                 c.activation, d_out, stream, split ? d_workspace : nullptr,
                                 split ? workspace_bytes : 0));
    CHECK_CUDA(cudaStreamSynchronize(stream));
    std::vector<uint16_t> out_bits(g.OutputSize());
    CHECK_CUDA(cudaMemcpy(out_bits.data(), d_out, out_bits.size() * 2,
                          cudaMemcpyDeviceToHost));
    int64_t bad = 0;
    for (int64_t i = 0; i < g.OutputSize(); ++i) {
      const double got = FromBits(type, out_bits[i]);
      const double tol = rounding * std::fabs(expect[i]) + 1e-6 * magnitude[i] + 1e-30;
      if (!(std::fabs(got - expect[i]) <= tol)) {
        if (bad++ < 3) {
          std::fprintf(stderr, "%s %s %s: output %lld: got %g, expected %g\n",
                       c.name.c_str(), type_name, how, static_cast<long long>(i), got,
                       static_cast<double>(expect[i]));
        }
      }
    }
    if (bad > 0) {
      std::fprintf(stderr, "%s %s %s: %lld of %lld outputs wrong\n", c.name.c_str(),
                   type_name, how, static_cast<long long>(bad),
                   static_cast<long long>(g.OutputSize()));
      ok = false;
    }
  }
  for (void* p : {static_cast<void*>(d_in), static_cast<void*>(d_values),
                  static_cast<void*>(d_bias), static_cast<void*>(d_index),
                  static_cast<void*>(d_meta), static_cast<void*>(d_packed),
                  static_cast<void*>(d_out), d_workspace}) {
    CHECK_CUDA(cudaFree(p));
  }
  return ok;
}

ConvAttrs Attrs(int64_t stride, int64_t dilation, Padding padding) {
  ConvAttrs a;
  a.stride_h = a.stride_w = stride;
  a.dilation_h = a.dilation_w = dilation;
  a.padding = padding;
  return a;
}

ConvAttrs Explicit(int64_t stride, int64_t dilation, int64_t top, int64_t bottom, int64_t left,
                   int64_t right) {
  ConvAttrs a = Attrs(stride, dilation, Padding::kExplicit);
  a.explicit_top = top;
  a.explicit_bottom = bottom;
  a.explicit_left = left;
  a.explicit_right = right;
  return a;
}

bool CheckRejections(cudaStream_t stream) {
  bool ok = true;
  // Three nonzeros in one group of 4 channels: rejected, naming the place.
  const int32_t offsets[] = {0, 3};
  const int32_t columns[] = {32, 33, 35};
  Sparse24Layout layout;
  std::string error = BuildSparse24Layout(1, 1, 2, 32, offsets, columns, &layout);
  if (error.find("output channel 0") == std::string::npos ||
      error.find("tap (0, 1)") == std::string::npos) {
    std::fprintf(stderr, "3-of-4 group not rejected as expected: '%s'\n",
                 error.c_str());
    ok = false;
  }
  error = BuildSparse24Layout(1, 1, 1, 48, offsets, columns, &layout);
  if (error.find("multiple of 32") == std::string::npos) {
    std::fprintf(stderr, "C = 48 not rejected: '%s'\n", error.c_str());
    ok = false;
  }
  // NCHW and C % 32 != 0 are refused by the launcher without launching.
  ConvGeometry g;
  ComputeConvGeometry(1, 4, 4, 32, 1, 1, 32, 16, Attrs(1, 1, Padding::kSame), &g);
  g.data_format = DataFormat::kNCHW;
  if (Sparse24Conv2DGpu(HalfType::kFloat16, g, nullptr, nullptr, nullptr,
                        nullptr, Activation::kNone, nullptr,
                        stream) != cudaErrorNotSupported) {
    std::fprintf(stderr, "NCHW not refused\n");
    ok = false;
  }
  return ok;
}

}  // namespace
}  // namespace escort

int main(int argc, char** argv) {
  using namespace escort;
  const int num_random = argc > 1 ? std::atoi(argv[1]) : 60;
  const unsigned seed = argc > 2 ? std::atoi(argv[2]) : 1;
  if (!Sparse24Supported()) {
    std::printf("SKIP: no sparse tensor cores on this device\n");
    return 0;
  }
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::mt19937 rng(seed);
  const Padding kSame = Padding::kSame, kValid = Padding::kValid;
  const ConvAttrs explicit_pad = Explicit(2, 1, 3, 0, 1, 2);
  const ConvAttrs dilated_explicit = Explicit(1, 2, 0, 3, 2, 1);
  std::vector<Case> cases = {
      {"1x1", 2, 7, 9, 32, 16, 1, 1, Attrs(1, 1, kValid), false, Activation::kNone},
      {"3x3_same_relu", 1, 14, 14, 64, 64, 3, 3, Attrs(1, 1, kSame), true, Activation::kRelu},
      {"7x7_stride2", 1, 23, 23, 32, 40, 7, 7, Attrs(2, 1, kSame), true, Activation::kNone},
      {"width1", 3, 17, 1, 32, 24, 3, 1, Attrs(1, 1, kSame), true, Activation::kRelu6},
      {"k_not_multiple_of_8", 2, 9, 9, 64, 21, 3, 3, Attrs(1, 1, kSame), true, Activation::kNone},
      {"k_multiple_of_8_not_16", 2, 9, 9, 32, 24, 3, 3, Attrs(1, 1, kValid), true, Activation::kNone},
      {"dilated", 2, 20, 18, 32, 32, 3, 3, Attrs(1, 2, kSame), false, Activation::kRelu},
      {"explicit_padding", 2, 15, 13, 64, 48, 3, 3, explicit_pad, true, Activation::kNone},
      {"many_blocks", 4, 28, 28, 128, 144, 3, 3, Attrs(1, 1, kSame), true, Activation::kRelu},
      {"k1", 1, 5, 5, 32, 1, 3, 3, Attrs(1, 1, kSame), true, Activation::kNone},
      // Enough blocks for the launcher's larger tiles on a GPU of up to ~140
      // multiprocessors: 128 x 256, then 128 x 128 (padded tiles in both).
      {"large_blocks", 8, 34, 34, 64, 500, 3, 3, Attrs(1, 1, kSame), true, Activation::kRelu},
      {"medium_blocks", 4, 30, 30, 96, 520, 1, 1, Attrs(1, 1, kValid), true, Activation::kNone},
      // The wgmma kernel's (on Hopper): 64 x 256 blocks for
      // K <= 64 on a full grid; the others above take 128 x 256
      // (large_blocks), 128 x 128 (many_blocks) and 64 x 128 (3x3_same_relu).
      {"narrow_blocks", 16, 48, 48, 64, 56, 3, 3, Attrs(1, 1, kSame), true, Activation::kRelu},
      // 256 x 128 blocks: K a multiple of 256 and a grid of >= ~140 of them.
      {"tall_blocks", 4, 68, 68, 64, 256, 3, 3, Attrs(1, 1, kSame), true, Activation::kRelu},
      // C % 64 == 32 (each tap's last wgmma stage half empty) on the full-grid
      // block shapes; the random cases take C = 32 and 96 on the others.
      {"c96_wide_blocks", 16, 33, 33, 96, 129, 3, 3, Attrs(1, 1, kSame), true, Activation::kNone},
      {"c96_narrow_blocks", 16, 48, 48, 96, 56, 3, 3, Attrs(1, 1, kSame), true, Activation::kRelu},
      {"c96_tall_blocks", 2, 66, 66, 96, 512, 3, 3, Attrs(1, 1, kSame), true, Activation::kRelu6},
      // The TMA kernel's im2col boxes: asymmetric SAME padding with strides,
      // dilation with explicit padding, a large window, a 1 x 1 stride 2, a
      // partial last channel block (K = 208: copies of the last tile) on a
      // full grid, and pixel blocks that run across images.
      {"tma_stride2_same", 4, 30, 31, 64, 128, 3, 3, Attrs(2, 1, kSame), true, Activation::kRelu},
      {"tma_dilated_explicit", 3, 25, 27, 128, 64, 3, 3, dilated_explicit, true, Activation::kNone},
      {"tma_7x7_stride2", 2, 40, 37, 64, 64, 7, 7, Attrs(2, 1, kSame), false, Activation::kNone},
      {"tma_1x1_stride2", 4, 28, 28, 256, 128, 1, 1, Attrs(2, 1, kValid), true, Activation::kNone},
      {"tma_partial_channel_block", 32, 28, 28, 96, 208, 3, 3, Attrs(1, 1, kSame), true, Activation::kRelu},
      {"tma_images_across_blocks", 5, 9, 11, 64, 128, 3, 3, Attrs(1, 1, kValid), false, Activation::kRelu},
      // The edges of the copy engine's ranges, then just past them (cp.async):
      // window corners at -128 and +127, tap offsets of 254 with a corner at
      // -128, stride 8; padding 129, offsets 256, stride 9.
      {"tma_corner_limits", 2, 3, 3, 64, 16, 1, 1, Explicit(1, 1, 128, 127, 128, 127), true, Activation::kNone, 1},
      {"tma_offset_limit", 2, 4, 4, 64, 16, 3, 3, Explicit(1, 127, 126, 126, 126, 126), true, Activation::kNone, 1},
      {"tma_stride8", 2, 61, 61, 64, 32, 3, 3, Attrs(8, 1, kSame), true, Activation::kNone, 1},
      {"fallback_padding129", 2, 2, 2, 64, 16, 1, 1, Explicit(1, 1, 129, 0, 0, 0), true, Activation::kNone, 0},
      {"fallback_offset256", 2, 4, 4, 64, 16, 3, 3, Explicit(1, 128, 128, 128, 128, 128), true, Activation::kNone, 0},
      {"fallback_stride9", 2, 40, 40, 64, 32, 3, 3, Attrs(9, 1, kSame), true, Activation::kNone, 0},
  };
  std::uniform_int_distribution<int> small(1, 4), spatial(1, 20), chunks(1, 4),
      outs(1, 80), window(1, 5), stride(1, 3), dilation(1, 2), pad(0, 1);
  for (int i = 0; i < num_random; ++i) {
    cases.push_back({"random" + std::to_string(i), small(rng), spatial(rng),
                     spatial(rng), 32 * chunks(rng), outs(rng), window(rng),
                     window(rng),
                     Attrs(stride(rng), dilation(rng), pad(rng) ? kSame : kValid),
                     pad(rng) == 1,
                     static_cast<Activation>(std::uniform_int_distribution<int>(0, 2)(rng))});
  }
  int failures = CheckRejections(stream) ? 0 : 1;
  bool wgmma = false;
  CHECK_CUDA(PrepareSparse24Wgmma(&wgmma));
  int device = 0, num_sms = 0;
  CHECK_CUDA(cudaGetDevice(&device));
  CHECK_CUDA(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  int run = 0, tma_runs = 0;
  for (const Case& c : cases) {
    ConvGeometry g;
    const bool tma = ComputeConvGeometry(c.N, c.H, c.W, c.C, c.R, c.S, c.C, c.K, c.attrs,
                                         &g).empty() &&
                     wgmma && Sparse24WgmmaLoadsWithTma(g, num_sms);
    if (wgmma && c.expect_tma >= 0 && tma != (c.expect_tma == 1)) {
      std::fprintf(stderr, "%s: expected the %s loads\n", c.name.c_str(),
                   c.expect_tma == 1 ? "TMA" : "cp.async");
      ++failures;
    }
    for (HalfType type : {HalfType::kFloat16, HalfType::kBFloat16}) {
      ++run;
      tma_runs += tma;
      if (!RunCase(c, type, &rng, stream)) ++failures;
    }
  }
  std::printf("%d of %d cases on the wgmma kernel's TMA loads\n", tma_runs, run);
  if (wgmma && (tma_runs == 0 || tma_runs == run)) {
    std::fprintf(stderr, "expected both the TMA and the cp.async loads of the wgmma kernel\n");
    ++failures;
  }
  CHECK_CUDA(cudaStreamDestroy(stream));
  std::printf("%s: %d cases, %d failed\n", failures ? "FAIL" : "PASS", run,
              failures);
  return failures ? 1 : 0;
}
