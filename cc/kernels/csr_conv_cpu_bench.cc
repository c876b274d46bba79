// Times CsrConv2DCpu on one layer given on the command line:
//   csr_conv_cpu_bench N H W C K R S stride pad density [threads] [nchw]
// with a square filter, symmetric explicit padding, a random CSR filter of
// the given density, bias and relu; threads defaults to the CPUs this
// process may use. Prints the median and minimum time, and at the median
// effective GFLOPS (dense flops / time) and sparse GFLOPS
// (2 * nnz * N * P * Q / time). On a shared machine the minimum is the
// steadier figure. ESCORT_CPU_ISA picks the path (see
// csr_conv_cpu_internal.h); run_cpu_bench.sh loops over the layer table.
//
// Build: g++ -std=c++17 -O3 -I. cc/kernels/csr_conv_cpu_bench.cc
//   cc/kernels/csr_conv_cpu.cc cc/kernels/csr_conv_cpu_x86.cc
//   cc/kernels/csr_validate.cc -lpthread
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cc/kernels/csr_conv.h"
#include "cc/kernels/csr_conv_cpu_internal.h"

namespace {

// A persistent pool, so that timings do not include thread creation (TF's
// intra-op pool is persistent too). Splits units into equal ranges.
class Pool {
 public:
  explicit Pool(int threads) {
    for (int t = 1; t < threads; ++t) {
      workers_.emplace_back([this, t] { Loop(t); });
    }
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    start_.notify_all();
    for (auto& worker : workers_) worker.join();
  }

  void Run(int64_t units, const std::function<void(int64_t, int64_t)>& work) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      work_ = &work;
      units_ = units;
      pending_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    start_.notify_all();
    Slice(0, work);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
  }

 private:
  int Threads() const { return static_cast<int>(workers_.size()) + 1; }

  void Slice(int t, const std::function<void(int64_t, int64_t)>& work) {
    const int64_t begin = units_ * t / Threads();
    const int64_t end = units_ * (t + 1) / Threads();
    if (begin < end) work(begin, end);
  }

  void Loop(int t) {
    int64_t seen = 0;
    for (;;) {
      const std::function<void(int64_t, int64_t)>* work;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        start_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        work = work_;
      }
      Slice(t, *work);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable start_, done_;
  const std::function<void(int64_t, int64_t)>* work_ = nullptr;
  int64_t units_ = 0, generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

// CPUs this process may run on (honours taskset), as TF sizes its pool.
int AvailableCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    return std::max(1, CPU_COUNT(&set));
  }
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 11) {
    std::fprintf(stderr,
                 "usage: %s N H W C K R S stride pad density [threads] "
                 "[nchw]\n",
                 argv[0]);
    return 2;
  }
  int64_t arg[9];
  for (int i = 0; i < 9; ++i) arg[i] = std::atoll(argv[i + 1]);
  const int64_t N = arg[0], H = arg[1], W = arg[2], C = arg[3], K = arg[4],
                R = arg[5], S = arg[6], stride = arg[7], pad = arg[8];
  const double density = std::atof(argv[10]);
  const int threads = argc > 11 ? std::atoi(argv[11]) : AvailableCpus();
  const bool nchw = argc > 12 && std::string(argv[12]) == "nchw";

  escort::ConvAttrs attrs;
  attrs.stride_h = attrs.stride_w = stride;
  attrs.padding = escort::Padding::kExplicit;
  attrs.explicit_top = attrs.explicit_bottom = pad;
  attrs.explicit_left = attrs.explicit_right = pad;
  attrs.data_format =
      nchw ? escort::DataFormat::kNCHW : escort::DataFormat::kNHWC;
  escort::ConvGeometry g;
  const std::string error =
      escort::ComputeConvGeometry(N, H, W, C, R, S, C, K, attrs, &g);
  if (!error.empty()) {
    std::fprintf(stderr, "bad geometry: %s\n", error.c_str());
    return 2;
  }

  std::mt19937 rng(1);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::bernoulli_distribution keep(density);
  std::vector<int32_t> row_offsets{0}, column_indices;
  std::vector<float> values;
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t j = 0; j < g.FilterColumns(); ++j) {
      if (keep(rng)) {
        column_indices.push_back(static_cast<int32_t>(j));
        values.push_back(uniform(rng));
      }
    }
    row_offsets.push_back(static_cast<int32_t>(values.size()));
  }
  std::vector<float> input(g.InputSize()), bias(K), output(g.OutputSize());
  for (float& x : input) x = uniform(rng);
  for (float& b : bias) b = uniform(rng);

  Pool pool(threads);
  const escort::ParallelFor parallel_for =
      [&pool](int64_t units, int64_t,
              const std::function<void(int64_t, int64_t)>& work) {
        pool.Run(units, work);
      };
  auto run = [&] {
    escort::CsrConv2DCpu(g, input.data(), row_offsets.data(),
                         column_indices.data(), values.data(), bias.data(),
                         escort::Activation::kRelu, output.data(),
                         parallel_for);
  };
  run();
  run();
  std::vector<double> seconds;
  const auto start = std::chrono::steady_clock::now();
  while (seconds.size() < 5 ||
         (seconds.size() < 200 &&
          std::chrono::steady_clock::now() - start < std::chrono::seconds(1))) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    seconds.push_back(std::chrono::duration<double>(
                          std::chrono::steady_clock::now() - t0)
                          .count());
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  const double dense_flops = 2.0 * N * g.P * g.Q * K * g.FilterColumns();
  const double sparse_flops =
      2.0 * static_cast<double>(values.size()) * N * g.P * g.Q;
  std::printf(
      "N=%lld %lldx%lldx%lld K=%lld %lldx%lld s%lld p%lld density=%.3f "
      "isa=%s threads=%d %s: median %.3f ms (min %.3f), effective %.1f "
      "GFLOPS, sparse %.1f GFLOPS\n",
      (long long)N, (long long)H, (long long)W, (long long)C, (long long)K,
      (long long)R, (long long)S, (long long)stride, (long long)pad, density,
      escort::internal::CpuIsaName(escort::internal::SelectedCpuIsa()),
      threads, nchw ? "NCHW" : "NHWC", median * 1e3, seconds[0] * 1e3,
      dense_flops / median * 1e-9, sparse_flops / median * 1e-9);
  return 0;
}
