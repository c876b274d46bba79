// The CPU kernel's own ceiling on this machine: one nonzero of the
// broadcast-FMA design (broadcast the weight, 8 AVX2 vector loads of
// consecutive output positions at the nonzero's stretched offset, 8 FMAs),
// timed over random offsets into a buffer of a given size, as in
// Avx2Block<0..7>. Offsets are arbitrary floats (as the kernel's are) or
// rounded to whole vectors (to see what alignment would buy).
//
//   g++ -O3 -o /tmp/load_ceiling benchmarks/cpu/load_ceiling.cc
//   /tmp/load_ceiling 4096 40960 204800      # buffer sizes in floats
//
// Useful GFLOPS per core = 2 * 64 / (ns per nonzero).
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace {

__attribute__((target("avx2,fma"))) float Run(const float* buffer,
                                              const std::ptrdiff_t* offsets,
                                              const float* weights, int n,
                                              int reps) {
  __m256 acc[8];
  for (auto& a : acc) a = _mm256_setzero_ps();
  for (int r = 0; r < reps; ++r) {
    for (int i = 0; i < n; ++i) {
      const __m256 w = _mm256_broadcast_ss(weights + i);
      const float* source = buffer + offsets[i];
      for (int v = 0; v < 8; ++v) {
        acc[v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(source + 8 * v), acc[v]);
      }
    }
  }
  float sum = 0.0f;  // keeps the work observable
  for (auto& a : acc) {
    float lanes[8];
    _mm256_storeu_ps(lanes, a);
    sum += lanes[0];
  }
  return sum;
}

}  // namespace

int main(int argc, char** argv) {
  constexpr int kNonzeros = 4096, kReps = 2000;
  for (int arg = 1; arg < argc; ++arg) {
    const int size = std::atoi(argv[arg]);
    if (size < 128) return 2;
    std::vector<float> storage(size + 128 + 16);
    float* buffer = storage.data() + (16 - reinterpret_cast<uintptr_t>(storage.data()) / 4 % 16) % 16;
    for (int i = 0; i < size + 128; ++i) buffer[i] = 1e-3f * (i % 7);
    const std::vector<float> weights(kNonzeros, 0.5f);
    for (const bool aligned : {false, true}) {
      std::mt19937 rng(1);
      std::uniform_int_distribution<int> pick(0, size - 64);
      std::vector<std::ptrdiff_t> offsets(kNonzeros);
      for (auto& o : offsets) o = aligned ? pick(rng) & ~7 : pick(rng);
      Run(buffer, offsets.data(), weights.data(), kNonzeros, 10);
      const auto start = std::chrono::steady_clock::now();
      const float sum = Run(buffer, offsets.data(), weights.data(), kNonzeros, kReps);
      const double ns = std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
                            .count() * 1e9 / (double{kReps} * kNonzeros);
      std::printf("buffer %7d floats, %-9s offsets: %.2f ns per nonzero, %.1f useful GFLOPS/core%s\n",
                  size, aligned ? "aligned" : "arbitrary", ns, 128.0 / ns, sum < 0 ? "!" : "");
    }
  }
  return 0;
}
