// CPU test of BuildSparse24Layout: decodes the packed layout back into a
// dense filter by the fragment rules written in sparse24_conv.h and checks
// that it equals the CSR filter, over random 2:4 filters (groups of 0, 1 and
// 2 nonzeros, K not a multiple of 16), and that non-2:4 filters are
// rejected with a message naming the place. The GPU test
// (sparse24_conv_gpu_test.cu) checks the same layout against the hardware.
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cc/kernels/sparse24_conv.h"

namespace escort {
namespace {

int failures = 0;

void Expect(bool condition, const std::string& what) {
  if (!condition) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

struct Filter {
  int64_t K, R, S, C;
  std::vector<int32_t> row_offsets, column_indices;
  std::vector<float> dense;  // [K][R*S*C]: entry i of the CSR holds value i + 1
};

Filter Random24Filter(int64_t K, int64_t R, int64_t S, int64_t C,
                      std::mt19937* rng) {
  Filter f{K, R, S, C, {0}, {}, std::vector<float>(K * R * S * C, 0.f)};
  std::uniform_int_distribution<int> kept_count(0, 2), position(0, 3);
  const int64_t cols = R * S * C;
  for (int64_t k = 0; k < K; ++k) {
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
        f.dense[k * cols + group * 4 + pos] =
            static_cast<float>(f.column_indices.size() + 1);
        f.column_indices.push_back(static_cast<int32_t>(group * 4 + pos));
      }
    }
    f.row_offsets.push_back(static_cast<int32_t>(f.column_indices.size()));
  }
  return f;
}

// The dense K x (R*S*C) filter the layout stands for, read the way the
// tensor cores read it (sparse24_conv.h).
std::vector<float> Decode(const Sparse24Layout& layout, int64_t K,
                          int64_t cols, bool* well_formed) {
  std::vector<float> dense(K * cols, 0.f);
  *well_formed = true;
  for (int64_t step = 0; step < layout.num_steps; ++step) {
    for (int64_t tile = 0; tile < layout.num_tiles; ++tile) {
      const int64_t fragment = step * layout.num_tiles + tile;
      for (int64_t lane = 0; lane < 32; ++lane) {
        const int64_t g = lane / 4, t = lane % 4;
        for (int reg = 0; reg < 4; ++reg) {
          const int64_t row = tile * 16 + g + 8 * (reg % 2);
          const int64_t group = t + 4 * (reg / 2);  // within the step
          // The metadata of (row, group) sits in lane (g, group / 4).
          const uint32_t meta = layout.metadata[fragment * 32 + g * 4 + group / 4];
          const uint32_t nibble = (meta >> (16 * (reg % 2) + 4 * (group % 4))) & 0xF;
          const int64_t positions[2] = {nibble & 3, nibble >> 2};
          if (positions[0] >= positions[1]) *well_formed = false;
          for (int slot = 0; slot < 2; ++slot) {
            const int32_t index =
                layout.value_index[(fragment * 32 + lane) * 8 + reg * 2 + slot];
            if (index < 0) continue;
            if (row >= K) {
              *well_formed = false;
              continue;
            }
            dense[row * cols + step * 32 + group * 4 + positions[slot]] =
                static_cast<float>(index + 1);
          }
        }
      }
      for (int64_t lane = 0; lane < 32; ++lane) {
        if (lane % 4 >= 2 && layout.metadata[fragment * 32 + lane] != 0) {
          *well_formed = false;  // selector 0 reads lanes t < 2 only
        }
      }
    }
  }
  return dense;
}

void TestRoundTrip(std::mt19937* rng) {
  const int64_t shapes[][4] = {{16, 1, 1, 32}, {1, 3, 3, 32},  {21, 3, 3, 64},
                               {40, 7, 7, 32}, {64, 1, 1, 256}, {33, 2, 5, 96}};
  for (const auto& shape : shapes) {
    const Filter f = Random24Filter(shape[0], shape[1], shape[2], shape[3], rng);
    Sparse24Layout layout;
    const std::string error =
        BuildSparse24Layout(f.K, f.R, f.S, f.C, f.row_offsets.data(),
                            f.column_indices.data(), &layout);
    const std::string name = "K=" + std::to_string(f.K) + " R=" +
                             std::to_string(f.R) + " S=" + std::to_string(f.S) +
                             " C=" + std::to_string(f.C);
    Expect(error.empty(), name + ": rejected: " + error);
    if (!error.empty()) continue;
    Expect(layout.num_steps == f.R * f.S * f.C / 32, name + ": num_steps");
    Expect(layout.num_tiles == (f.K + 15) / 16, name + ": num_tiles");
    Expect(static_cast<int64_t>(layout.value_index.size()) ==
               layout.NumPackedValues(),
           name + ": value_index size");
    bool well_formed = false;
    const std::vector<float> decoded =
        Decode(layout, f.K, f.R * f.S * f.C, &well_formed);
    Expect(well_formed, name + ": metadata positions ascend, pad rows empty");
    Expect(decoded == f.dense, name + ": decoded filter equals the CSR filter");
  }
}

void TestRejections() {
  Sparse24Layout layout;
  // Output channel 1, tap (1, 0) of a 2x1 window, channels 36..39: 3 kept.
  const int32_t offsets[] = {0, 1, 5};
  const int32_t columns[] = {0, 2, 64 + 36, 64 + 37, 64 + 39};
  std::string error = BuildSparse24Layout(2, 2, 1, 64, offsets, columns, &layout);
  Expect(error.find("output channel 1 has 3 nonzeros among input channels "
                    "36..39 of tap (1, 0)") != std::string::npos,
         "3-of-4 group named: '" + error + "'");
  const int32_t ok_offsets[] = {0, 1};
  const int32_t ok_columns[] = {0};
  error = BuildSparse24Layout(1, 1, 1, 16, ok_offsets, ok_columns, &layout);
  Expect(error.find("multiple of 32") != std::string::npos,
         "C = 16 rejected: '" + error + "'");
  error = BuildSparse24Layout(1, 1, 1, 32, ok_offsets, ok_columns, &layout);
  Expect(error.empty(), "a single nonzero is 2:4: '" + error + "'");
}

}  // namespace
}  // namespace escort

int main() {
  std::mt19937 rng(7);
  escort::TestRoundTrip(&rng);
  escort::TestRejections();
  std::printf("%s: sparse24_conv_test, %d failures\n",
              escort::failures ? "FAIL" : "PASS", escort::failures);
  return escort::failures ? 1 : 0;
}
