// Plain, obviously-correct CSR convolution: the oracle for the C++ tests,
// the fuzzer and the GPU test. It decodes each column index directly
// instead of stretching it, so it shares no index arithmetic with the
// fast kernels it checks.
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#include "cc/kernels/csr_conv.h"

namespace escort {

namespace {

int64_t InputIndex(const ConvGeometry& g, int64_t n, int64_t h, int64_t w,
                   int64_t c) {
  return g.data_format == DataFormat::kNHWC ? ((n * g.H + h) * g.W + w) * g.C + c
                                            : ((n * g.C + c) * g.H + h) * g.W + w;
}

int64_t OutputIndex(const ConvGeometry& g, int64_t n, int64_t p, int64_t q,
                    int64_t k) {
  return g.data_format == DataFormat::kNHWC ? ((n * g.P + p) * g.Q + q) * g.K + k
                                            : ((n * g.K + k) * g.P + p) * g.Q + q;
}

}  // namespace

void CsrConv2DReference(const ConvGeometry& g, const float* input,
                        const int32_t* row_offsets,
                        const int32_t* column_indices, const float* values,
                        const float* bias, Activation activation,
                        float* output) {
  // Output rows (image n, row p) from `first` to `last`.
  auto compute_rows = [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      const int64_t n = row / g.P, p = row % g.P;
      for (int64_t q = 0; q < g.Q; ++q) {
        for (int64_t k = 0; k < g.K; ++k) {
          double sum = 0.0;
          for (int32_t i = row_offsets[k]; i < row_offsets[k + 1]; ++i) {
            const int64_t column = column_indices[i];
            const int64_t c = column % g.C;
            const int64_t s = (column / g.C) % g.S;
            const int64_t r = column / (g.C * g.S);
            const int64_t h = p * g.stride_h + r * g.dilation_h - g.pad_top;
            const int64_t w = q * g.stride_w + s * g.dilation_w - g.pad_left;
            if (h < 0 || h >= g.H || w < 0 || w >= g.W) continue;
            sum += static_cast<double>(values[i]) *
                   static_cast<double>(input[InputIndex(g, n, h, w, c)]);
          }
          if (bias != nullptr) sum += bias[k];
          if (activation != Activation::kNone) sum = std::max(sum, 0.0);
          if (activation == Activation::kRelu6) sum = std::min(sum, 6.0);
          output[OutputIndex(g, n, p, q, k)] = static_cast<float>(sum);
        }
      }
    }
  };
  // Every output is computed alone, so rows can be shared out among threads
  // without changing a result. The GPU tests' large cases took minutes of
  // device-machine time on one thread; small calls (the fuzzer's, most unit
  // cases) stay on this one.
  const int64_t num_rows = g.N * g.P;
  const int64_t work = num_rows * g.Q * std::max<int64_t>(1, row_offsets[g.K]);
  constexpr int64_t kWorkPerThread = int64_t{1} << 24;
  const int64_t num_threads = std::min<int64_t>(
      {num_rows, work / kWorkPerThread,
       std::max<int64_t>(1, std::thread::hardware_concurrency())});
  if (num_threads <= 1) {
    compute_rows(0, num_rows);
    return;
  }
  RunOnThreads(num_rows, num_threads, compute_rows);
}

void RunOnThreads(int64_t num_units, int64_t threads,
                  const std::function<void(int64_t begin, int64_t end)>& work) {
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t) {
    const int64_t begin = num_units * t / threads;
    const int64_t end = num_units * (t + 1) / threads;
    if (begin < end) pool.emplace_back(work, begin, end);
  }
  for (std::thread& thread : pool) thread.join();
}

}  // namespace escort
