// escort::ParallelFor on TensorFlow's intra-op thread pool.
#ifndef ESCORT_CC_TF_POOL_PARALLEL_FOR_H_
#define ESCORT_CC_TF_POOL_PARALLEL_FOR_H_

#include "cc/kernels/csr_conv.h"
#include "tensorflow/core/platform/threadpool.h"

namespace tensorflow {
namespace escort_tf {

// Splits the units into at most pool->NumThreads() contiguous slices (fewer
// when the total cost would not repay waking a thread). The calling thread
// and pool threads claim slices from a shared counter; the caller waits only
// for slices another thread has already started, so it never waits on a
// task stuck in a busy pool's queue.
//
// Why not ThreadPool::ParallelFor: measured on 2 cores, TF 2.21, its Eigen
// sharding left the second core mostly idle on sub-millisecond convolutions
// (1.3 CPUs used, no speedup over one thread); this schedule ran the same
// layers 1.6-1.9x faster.
escort::ParallelFor PoolParallelFor(thread::ThreadPool* pool);

}  // namespace escort_tf
}  // namespace tensorflow

#endif  // ESCORT_CC_TF_POOL_PARALLEL_FOR_H_
