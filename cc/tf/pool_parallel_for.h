// escort::ParallelFor on TensorFlow's intra-op thread pool.
#ifndef ESCORT_CC_TF_POOL_PARALLEL_FOR_H_
#define ESCORT_CC_TF_POOL_PARALLEL_FOR_H_

#include "cc/kernels/csr_conv.h"
#include "tensorflow/core/platform/threadpool.h"

namespace tensorflow {
namespace escort_tf {

// Splits the units into contiguous slices (one per pool thread for small
// convolutions, fewer when the total cost would not repay waking a thread,
// up to four per thread for large ones) that pool threads claim from a
// shared counter. The caller waits, and works only if it is itself a pool
// thread; it waits only for slices some thread has started.
//
// Why not ThreadPool::ParallelFor: measured on 2 cores, TF 2.21, its Eigen
// sharding left the second core mostly idle on sub-millisecond convolutions
// (1.3 CPUs used); this schedule runs the batch-1 layer table 1.2x faster
// (1.4x on res4/res5/CaffeNet conv3/conv5), is level at batch 8, and is as
// fast or faster on whole ResNet-50 and VGG-16.
escort::ParallelFor PoolParallelFor(thread::ThreadPool* pool);

// Starts waking the pool's threads for a PoolParallelFor that will follow
// with about `total_cost` cycles of work: one empty task per thread it will
// use, none if it will run on the caller alone. A parked thread takes tens of
// microseconds to wake on a VM, about as long as validating and planning a
// convolution; begun before those, the wake-up overlaps them instead of
// following them (measured 1-11% faster on the batch-1 layer table, most on
// the smallest layers).
void WakePoolThreads(thread::ThreadPool* pool, int64_t total_cost);

}  // namespace escort_tf
}  // namespace tensorflow

#endif  // ESCORT_CC_TF_POOL_PARALLEL_FOR_H_
