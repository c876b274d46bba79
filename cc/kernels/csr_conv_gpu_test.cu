// Standalone test of CsrConv2DGpu against CsrConv2DReference (double
// accumulation). No framework: build with
//   nvcc -std=c++17 -O2 -I. -gencode arch=compute_90,code=sm_90 \
//     cc/kernels/csr_conv_gpu_test.cu cc/kernels/csr_conv_gpu.cu \
//     cc/kernels/csr_conv_reference.cc cc/kernels/csr_validate.cc -o test
//   ./test [num_random_cases] [seed]
// Named edge cases run first, then random ones (strides, dilations, the
// three paddings, both data formats, activations, empty rows, every tile
// template through explicit configs). Outputs are poisoned with NaN before
// each run; every launch's status is checked. Small enough to run under
// compute-sanitizer (memcheck, racecheck).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cc/kernels/csr_conv.h"
#include "cc/kernels/csr_conv_gpu.h"
#include "cc/kernels/cuda_check_test.h"

namespace escort {
namespace {

struct Case {
  std::string name;
  int64_t N, H, W, C, K, R, S;
  ConvAttrs attrs;
  double density;
  double empty_rows;
  bool bias;
  Activation activation;
  bool use_config;
  CsrConvGpuConfig config;
};

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

// Returns true when the GPU output matches the reference.
bool RunCase(const Case& c, std::mt19937* rng, cudaStream_t stream,
             double* worst) {
  ConvGeometry g;
  const std::string err = ComputeConvGeometry(c.N, c.H, c.W, c.C, c.R, c.S,
                                              c.C, c.K, c.attrs, &g);
  if (!err.empty()) return true;  // Not a valid conv: nothing to test.
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  std::uniform_real_distribution<double> coin(0.0, 1.0);

  // CSR filter: ascending columns per row.
  const int64_t cols = g.FilterColumns();
  std::vector<int32_t> row_offsets(g.K + 1, 0), column_indices;
  std::vector<float> values;
  for (int64_t k = 0; k < g.K; ++k) {
    const bool empty = coin(*rng) < c.empty_rows;
    for (int64_t j = 0; j < cols && !empty; ++j) {
      if (coin(*rng) < c.density) {
        column_indices.push_back(static_cast<int32_t>(j));
        values.push_back(uni(*rng));
      }
    }
    row_offsets[k + 1] = static_cast<int32_t>(column_indices.size());
  }
  const std::string verr = ValidateCsrFilter(
      g.K, cols, row_offsets.data(), row_offsets.size(), column_indices.data(),
      column_indices.size(), values.size());
  if (!verr.empty()) {
    std::fprintf(stderr, "%s: bad test filter: %s\n", c.name.c_str(),
                 verr.c_str());
    return false;
  }
  std::vector<float> input(g.InputSize()), bias(g.K);
  for (float& v : input) v = uni(*rng);
  for (float& v : bias) v = uni(*rng);
  std::vector<float> expect(g.OutputSize());
  CsrConv2DReference(g, input.data(), row_offsets.data(),
                     column_indices.data(), values.data(),
                     c.bias ? bias.data() : nullptr, c.activation,
                     expect.data());

  float* d_in = ToDevice(input);
  int32_t* d_ro = ToDevice(row_offsets);
  int32_t* d_ci = ToDevice(column_indices);
  float* d_val = ToDevice(values);
  float* d_bias = ToDevice(bias);
  std::vector<float> poison(g.OutputSize(),
                            std::numeric_limits<float>::quiet_NaN());
  float* d_out = ToDevice(poison);
  const int64_t nnz = static_cast<int64_t>(values.size());
  cudaError_t st =
      c.use_config
          ? CsrConv2DGpuWithConfig(g, d_in, d_ro, d_ci, d_val, nnz,
                                   c.bias ? d_bias : nullptr, c.activation,
                                   d_out, c.config, stream)
          : CsrConv2DGpu(g, d_in, d_ro, d_ci, d_val, nnz,
                         c.bias ? d_bias : nullptr, c.activation, d_out,
                         stream);
  bool ok = true;
  if (st == cudaErrorInvalidValue && c.use_config) {
    // Tile too large for this geometry's shared memory: heuristic instead.
    st = CsrConv2DGpu(g, d_in, d_ro, d_ci, d_val, nnz,
                      c.bias ? d_bias : nullptr, c.activation, d_out, stream);
  }
  if (st != cudaSuccess) {
    std::fprintf(stderr, "%s: launch failed: %s\n", c.name.c_str(),
                 cudaGetErrorString(st));
    ok = false;
  }
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<float> got(g.OutputSize());
  if (!got.empty()) {
    CHECK_CUDA(cudaMemcpy(got.data(), d_out, got.size() * sizeof(float),
                          cudaMemcpyDeviceToHost));
  }
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i])) {
      std::fprintf(stderr, "%s: output %zu unwritten or NaN\n",
                   c.name.c_str(), i);
      ok = false;
      break;
    }
    const double d = static_cast<double>(got[i]) - expect[i];
    num += d * d;
    den += static_cast<double>(expect[i]) * expect[i];
  }
  const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  if (rel > 1e-5) {
    std::fprintf(stderr, "%s: relative error %g\n", c.name.c_str(), rel);
    ok = false;
  }
  *worst = std::max(*worst, rel);
  cudaFree(d_in);
  cudaFree(d_ro);
  cudaFree(d_ci);
  cudaFree(d_val);
  cudaFree(d_bias);
  cudaFree(d_out);
  return ok;
}

ConvAttrs Attrs(int sh, int sw, int dh, int dw, Padding pad,
                DataFormat fmt) {
  ConvAttrs a;
  a.stride_h = sh;
  a.stride_w = sw;
  a.dilation_h = dh;
  a.dilation_w = dw;
  a.padding = pad;
  a.data_format = fmt;
  return a;
}

std::vector<Case> NamedCases() {
  std::vector<Case> cases;
  const auto nhwc = DataFormat::kNHWC, nchw = DataFormat::kNCHW;
  Case base{};
  base.density = 0.3;
  base.bias = true;
  base.activation = Activation::kNone;
  auto add = [&](const std::string& name, int64_t N, int64_t H, int64_t W,
                 int64_t C, int64_t K, int64_t R, int64_t S, ConvAttrs a,
                 double density, double empty, Activation act) {
    Case c = base;
    c.name = name;
    c.N = N; c.H = H; c.W = W; c.C = C; c.K = K; c.R = R; c.S = S;
    c.attrs = a;
    c.density = density;
    c.empty_rows = empty;
    c.activation = act;
    cases.push_back(c);
  };
  add("one_element", 1, 1, 1, 1, 1, 1, 1, Attrs(1, 1, 1, 1, Padding::kValid, nhwc), 1.0, 0, Activation::kNone);
  add("zero_filter", 2, 7, 5, 3, 4, 3, 3, Attrs(1, 1, 1, 1, Padding::kSame, nchw), 0.0, 0, Activation::kRelu6);
  add("empty_rows", 3, 9, 9, 8, 17, 3, 3, Attrs(1, 1, 1, 1, Padding::kSame, nhwc), 0.5, 0.5, Activation::kRelu);
  add("stride2_dil2", 2, 15, 11, 5, 6, 3, 3, Attrs(2, 2, 2, 2, Padding::kSame, nchw), 0.4, 0, Activation::kNone);
  add("stride3_valid", 1, 20, 20, 4, 3, 5, 5, Attrs(3, 3, 1, 1, Padding::kValid, nhwc), 0.6, 0, Activation::kRelu);
  add("width_one", 4, 13, 1, 2, 5, 3, 1, Attrs(1, 1, 1, 1, Padding::kSame, nhwc), 0.9, 0, Activation::kNone);
  add("dense_7x7", 2, 10, 10, 3, 8, 7, 7, Attrs(2, 1, 1, 2, Padding::kSame, nhwc), 0.995, 0, Activation::kRelu6);
  add("many_channels", 2, 5, 5, 260, 40, 3, 3, Attrs(1, 1, 1, 1, Padding::kSame, nhwc), 0.1, 0, Activation::kNone);
  add("batch33", 33, 6, 7, 5, 9, 3, 3, Attrs(1, 1, 1, 1, Padding::kSame, nchw), 0.2, 0, Activation::kRelu);
  {
    ConvAttrs a = Attrs(1, 2, 1, 1, Padding::kExplicit, nhwc);
    a.explicit_top = 2; a.explicit_bottom = 0; a.explicit_left = 1; a.explicit_right = 3;
    add("explicit_asym", 2, 8, 9, 6, 7, 3, 2, a, 0.3, 0, Activation::kNone);
  }
  add("zero_batch", 0, 8, 8, 4, 4, 3, 3, Attrs(1, 1, 1, 1, Padding::kSame, nhwc), 0.3, 0, Activation::kNone);
  return cases;
}

Case RandomCase(std::mt19937* rng, int i) {
  auto pick = [&](std::initializer_list<int> v) {
    return *(v.begin() + std::uniform_int_distribution<int>(0, v.size() - 1)(*rng));
  };
  std::uniform_int_distribution<int> small(1, 14);
  Case c{};
  c.name = "random_" + std::to_string(i);
  c.N = pick({1, 1, 2, 3, 5, 8});
  c.H = small(*rng);
  c.W = small(*rng);
  c.C = pick({1, 2, 3, 8, 16, 33, 70});
  c.K = pick({1, 2, 5, 16, 31});
  c.R = pick({1, 2, 3, 3, 5});
  c.S = pick({1, 2, 3, 3, 5});
  ConvAttrs a = Attrs(pick({1, 1, 2, 3}), pick({1, 1, 2, 3}), pick({1, 1, 2}),
                      pick({1, 1, 2}),
                      static_cast<Padding>(pick({0, 1, 2})),
                      pick({0, 1}) ? DataFormat::kNHWC : DataFormat::kNCHW);
  a.explicit_top = pick({0, 1, 2});
  a.explicit_bottom = pick({0, 1, 2});
  a.explicit_left = pick({0, 1, 2});
  a.explicit_right = pick({0, 1, 2});
  c.attrs = a;
  c.density = std::uniform_real_distribution<double>(0.005, 1.0)(*rng);
  c.empty_rows = pick({0, 0, 1}) ? 0.3 : 0.0;
  c.bias = pick({0, 1});
  c.activation = static_cast<Activation>(pick({0, 1, 2}));
  c.use_config = (i % 2) == 1;
  int pt = pick({2, 4, 8, 16});
  int kw = pt == 16 || pt == 2 ? pick({1, 2}) : pick({1, 2, 4});
  int nb = pick({1, 2, 4, 8, 16, 32});
  int pix = 32 * pt / nb;
  int tw = std::uniform_int_distribution<int>(1, std::min(pix, 16))(*rng);
  int th = std::uniform_int_distribution<int>(1, std::max(1, pix / tw))(*rng);
  c.config.pixels_per_lane = pt;
  c.config.channels_per_warp = kw;
  c.config.warps = pick({4, 8});
  c.config.images = nb;
  c.config.tile_h = th;
  c.config.tile_w = tw;
  c.config.chunk_c = pick({1, 4, 8, 16, 32, 64, 128, 512});
  c.config.preload = pick({0, 1});
  // Cluster split over input-channel chunks (sm_90+; elsewhere, or with more
  // ranks than chunks, the config is rejected and the heuristic runs).
  c.config.split_c = pick({1, 1, 2, 3, 4, 8});
  // Row parts (over 16 warps only for small instances; else rejected).
  c.config.row_parts = pick({1, 1, 2, 4});
  if (pick({0, 1})) {  // Row-slot fast path; rejected (then heuristic) unless stride_w 1.
    static const int kFast[][3] = {{4, 2, 4}, {8, 2, 4}, {8, 4, 8}, {16, 1, 8}, {16, 2, 4}};
    const int* f = kFast[std::uniform_int_distribution<int>(0, 4)(*rng)];
    c.config.pixels_per_lane = f[0];
    c.config.channels_per_warp = f[1];
    c.config.row_slots = f[2];
    c.config.tile_w = (32 / nb) * f[2];
    c.config.tile_h = f[0] / f[2];
  }
  return c;
}

}  // namespace
}  // namespace escort

int main(int argc, char** argv) {
  using namespace escort;
  const int num_random = argc > 1 ? std::atoi(argv[1]) : 60;
  const unsigned seed = argc > 2 ? std::atoi(argv[2]) : 1;
  std::mt19937 rng(seed);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::vector<Case> cases = NamedCases();
  for (int i = 0; i < num_random; ++i) cases.push_back(RandomCase(&rng, i));
  int failed = 0;
  double worst = 0;
  for (const Case& c : cases) {
    if (!RunCase(c, &rng, stream, &worst)) ++failed;
  }
  CHECK_CUDA(cudaStreamDestroy(stream));
  std::printf("csr_conv_gpu_test: %zu cases, %d failed, max relative error %.3g\n",
              cases.size(), failed, worst);
  return failed == 0 ? 0 : 1;
}
