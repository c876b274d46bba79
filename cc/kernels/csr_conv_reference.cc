// Plain, obviously-correct CSR convolution: the oracle for the C++ tests,
// the fuzzer and the GPU test. It decodes each column index directly
// instead of stretching it, so it shares no index arithmetic with the
// fast kernels it checks.
#include <algorithm>
#include <cstdint>

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
  for (int64_t n = 0; n < g.N; ++n) {
    for (int64_t p = 0; p < g.P; ++p) {
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
  }
}

}  // namespace escort
