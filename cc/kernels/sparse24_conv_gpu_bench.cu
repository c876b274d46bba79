// Times Sparse24Conv2DGpu on one layer (a random 2:4 filter, exactly 2 of 4
// kept), framework-free: CUDA events around back-to-back launches on one
// stream, after warm-up. Prints one JSON line. Build:
//   cc/kernels/build_sparse24_gpu.sh OUTDIR
//   OUTDIR/sparse24_conv_gpu_bench N H W C K R S stride pad [f16|bf16] [whole]
// benchmarks/gpu/bench_sparse24.py runs it over the layer table next to
// cuDNN (through PyTorch).
#include <cuda_runtime.h>

#include <algorithm>
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

int main(int argc, char** argv) {
  using namespace escort;
  if (argc < 10) {
    std::fprintf(stderr, "usage: %s N H W C K R S stride pad [f16|bf16] [whole]\n", argv[0]);
    return 2;
  }
  int64_t a[9];
  for (int i = 0; i < 9; ++i) a[i] = std::atoll(argv[i + 1]);
  const HalfType type = argc > 10 && std::strcmp(argv[10], "bf16") == 0
                            ? HalfType::kBFloat16
                            : HalfType::kFloat16;
  // "whole": no workspace, so no split-K (as the op ran before it had one).
  const bool allow_split = !(argc > 11 && std::strcmp(argv[11], "whole") == 0);
  ConvAttrs attrs;
  attrs.stride_h = attrs.stride_w = a[7];
  attrs.padding = Padding::kExplicit;
  attrs.explicit_top = attrs.explicit_bottom = a[8];
  attrs.explicit_left = attrs.explicit_right = a[8];
  ConvGeometry g;
  const std::string error =
      ComputeConvGeometry(a[0], a[1], a[2], a[3], a[5], a[6], a[3], a[4], attrs, &g);
  if (!error.empty()) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 2;
  }
  std::mt19937 rng(1);
  std::vector<int32_t> row_offsets{0}, column_indices;
  for (int64_t k = 0; k < g.K; ++k) {
    for (int64_t group = 0; group < g.FilterColumns() / 4; ++group) {
      int first = static_cast<int>(rng() % 4), second = static_cast<int>(rng() % 3);
      if (second >= first) ++second;
      column_indices.push_back(static_cast<int32_t>(group * 4 + std::min(first, second)));
      column_indices.push_back(static_cast<int32_t>(group * 4 + std::max(first, second)));
    }
    row_offsets.push_back(static_cast<int32_t>(column_indices.size()));
  }
  Sparse24Layout layout;
  const std::string layout_error = BuildSparse24Layout(
      g.K, g.R, g.S, g.C, row_offsets.data(), column_indices.data(), &layout);
  if (!layout_error.empty()) {
    std::fprintf(stderr, "%s\n", layout_error.c_str());
    return 2;
  }
  // Values and input: small random 16-bit patterns (finite in both types).
  auto random_bits = [&rng](int64_t n) {
    std::vector<uint16_t> v(n);
    for (uint16_t& x : v) x = static_cast<uint16_t>(0x3000 | (rng() & 0x83ff));
    return v;
  };
  const std::vector<uint16_t> values = random_bits(column_indices.size());
  const std::vector<uint16_t> input = random_bits(g.InputSize());
  uint16_t *d_in, *d_values, *d_packed, *d_out;
  int32_t* d_index;
  uint32_t* d_meta;
  CHECK_CUDA(cudaMalloc(&d_in, input.size() * 2));
  CHECK_CUDA(cudaMalloc(&d_values, values.size() * 2));
  CHECK_CUDA(cudaMalloc(&d_packed, layout.NumPackedValues() * 2));
  CHECK_CUDA(cudaMalloc(&d_out, g.OutputSize() * 2));
  CHECK_CUDA(cudaMalloc(&d_index, layout.value_index.size() * 4));
  CHECK_CUDA(cudaMalloc(&d_meta, layout.metadata.size() * 4));
  CHECK_CUDA(cudaMemcpy(d_in, input.data(), input.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_values, values.data(), values.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_index, layout.value_index.data(), layout.value_index.size() * 4,
                        cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_meta, layout.metadata.data(), layout.metadata.size() * 4,
                        cudaMemcpyHostToDevice));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CHECK_CUDA(PackSparse24ValuesGpu(d_index, layout.NumPackedValues(), d_values,
                                   d_packed, stream));
  size_t workspace_bytes = 0;
  if (allow_split) CHECK_CUDA(Sparse24WorkspaceBytes(g, &workspace_bytes));
  void* d_workspace = nullptr;
  if (workspace_bytes > 0) CHECK_CUDA(cudaMalloc(&d_workspace, workspace_bytes));
  auto run = [&] {
    CHECK_CUDA(Sparse24Conv2DGpu(type, g, d_in, d_packed, d_meta, nullptr, Activation::kRelu,
                                 d_out, stream, d_workspace, workspace_bytes));
  };
  for (int i = 0; i < 10; ++i) run();
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  // Repetitions for about 20 ms of work, timed in 5 samples; the median.
  CHECK_CUDA(cudaEventRecord(start, stream));
  run();
  CHECK_CUDA(cudaEventRecord(stop, stream));
  CHECK_CUDA(cudaEventSynchronize(stop));
  float first_ms = 0;
  CHECK_CUDA(cudaEventElapsedTime(&first_ms, start, stop));
  const int reps = std::max(1, static_cast<int>(4.0 / std::max(first_ms, 1e-3f)));
  std::vector<float> samples;
  for (int sample = 0; sample < 5; ++sample) {
    CHECK_CUDA(cudaEventRecord(start, stream));
    for (int i = 0; i < reps; ++i) run();
    CHECK_CUDA(cudaEventRecord(stop, stream));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    samples.push_back(ms / reps);
  }
  std::sort(samples.begin(), samples.end());
  const double us = samples[2] * 1e3;
  // Dense-equivalent FLOPs, as cuDNN's are counted.
  const double flops = 2.0 * g.N * g.P * g.Q * g.K * g.R * g.S * g.C;
  std::printf(
      "{\"us\": %.3f, \"dense_tflops\": %.2f, \"reps\": %d, \"workspace_bytes\": %zu}\n", us,
      flops / us * 1e-6, reps, workspace_bytes);
  return 0;
}
