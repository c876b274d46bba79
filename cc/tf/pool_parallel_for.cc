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

}  // namespace

escort::ParallelFor PoolParallelFor(thread::ThreadPool* pool) {
  return [pool](int64_t num_units, int64_t cost_per_unit,
                const std::function<void(int64_t, int64_t)>& work) {
    const int64_t affordable =
        std::max<int64_t>(1, num_units * cost_per_unit / kMinCyclesPerSlice);
    const int64_t num_slices = std::min<int64_t>(
        {num_units, int64_t{pool->NumThreads()}, affordable});
    if (num_slices <= 1) {
      work(0, num_units);
      return;
    }
    auto shared =
        std::make_shared<SharedSlices>(num_units, num_slices, &work);
    for (int64_t helper = 1; helper < num_slices; ++helper) {
      pool->Schedule([shared] { shared->RunSome(); });
    }
    shared->RunSome();
    shared->all_finished.WaitForNotification();
  };
}

}  // namespace escort_tf
}  // namespace tensorflow
