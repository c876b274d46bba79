#include "cc/tf/pool_parallel_for.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "absl/synchronization/notification.h"

namespace tensorflow {
namespace escort_tf {
namespace {

// Below this many estimated cycles per slice, waking a thread costs more
// than it saves (a wake-up is tens of microseconds on a loaded VM).
constexpr int64_t kMinCyclesPerSlice = 100000;
// Large convolutions get up to kSlicesPerThread slices per thread of at
// least this many cycles, claimed dynamically, so that a thread slowed down
// (unequal units, a busy core) does not hold the others back. Small ones
// keep one slice per thread: each slice refills its first band buffer.
constexpr int64_t kBalancedSliceCycles = 2000000;
constexpr int64_t kSlicesPerThread = 4;

// Lives until the last scheduled task has run, which may be after the
// caller returned; by then every slice is claimed and `work` is not touched.
struct SharedSlices {
  SharedSlices(int64_t num_units, int64_t num_slices,
               const std::function<void(int64_t, int64_t)>* work)
      : num_units(num_units), num_slices(num_slices), work(work) {}

  // Runs unclaimed slices until none is left.
  void RunSome() {
    for (int64_t slice = next.fetch_add(1); slice < num_slices;
         slice = next.fetch_add(1)) {
      (*work)(num_units * slice / num_slices,
              num_units * (slice + 1) / num_slices);
      if (finished.fetch_add(1) + 1 == num_slices) all_finished.Notify();
    }
  }

  const int64_t num_units, num_slices;
  const std::function<void(int64_t, int64_t)>* const work;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};
  absl::Notification all_finished;
};

// Threads worth waking for `total_cost` cycles: the pool's, unless that
// much work would not repay waking them.
int64_t ThreadsToUse(thread::ThreadPool* pool, int64_t total_cost) {
  return std::clamp<int64_t>(total_cost / kMinCyclesPerSlice, 1,
                             pool->NumThreads());
}

}  // namespace

void WakePoolThreads(thread::ThreadPool* pool, int64_t total_cost) {
  const int64_t threads = ThreadsToUse(pool, total_cost);
  if (threads < 2) return;
  for (int64_t task = 0; task < threads; ++task) pool->Schedule([] {});
}

escort::ParallelFor PoolParallelFor(thread::ThreadPool* pool) {
  return [pool](int64_t num_units, int64_t cost_per_unit,
                const std::function<void(int64_t, int64_t)>& work) {
    const int64_t threads = pool->NumThreads();
    const int64_t total_cost = num_units * cost_per_unit;
    int64_t num_slices = ThreadsToUse(pool, total_cost);
    if (num_slices == threads) {
      num_slices = std::clamp<int64_t>(total_cost / kBalancedSliceCycles,
                                       threads, kSlicesPerThread * threads);
    }
    num_slices = std::min(num_slices, num_units);
    if (num_slices <= 1) {
      work(0, num_units);
      return;
    }
    auto shared =
        std::make_shared<SharedSlices>(num_units, num_slices, &work);
    // A caller outside the pool (TF's inter-op thread) only waits: working
    // too would put one thread more than there are cores on the CPU, which
    // measured 5-15% slower on whole models. A caller inside the pool must
    // work, or its own slice could wait behind it in the queue.
    const bool caller_in_pool = pool->CurrentThreadId() >= 0;
    for (int64_t task = caller_in_pool ? 1 : 0; task < num_slices; ++task) {
      pool->Schedule([shared] { shared->RunSome(); });
    }
    if (caller_in_pool) shared->RunSome();
    shared->all_finished.WaitForNotification();
  };
}

}  // namespace escort_tf
}  // namespace tensorflow
