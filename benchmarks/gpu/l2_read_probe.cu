// The card's L2-to-SM read bandwidth, the ceiling the 2:4 kernel's batch-32
// traffic is compared with in NOTES.md: every SM reads, with 16-byte loads,
// a buffer small enough to stay in L2, many times over; bytes read over the
// time of the whole grid (CUDA events) gives TB/s.
//   nvcc -O3 -I../.. -gencode=arch=compute_90,code=sm_90 l2_read_probe.cu -o l2_read_probe
//   ./l2_read_probe [buffer MiB = 16] [passes = 200]
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "cc/kernels/cuda_check_test.h"

// Each block walks the whole buffer from its own starting point, so that
// every SM reads every line (as the conv's blocks all read the shared
// filter and overlapping input) and the reads spread over L2's slices.
// ld.global.cg bypasses L1, so every load is served by L2.
__global__ void ReadKernel(const int4* buffer, long long num_vectors, int passes, int* sink) {
  int4 sum = make_int4(0, 0, 0, 0);
  const long long start = (static_cast<long long>(blockIdx.x) * 7919) % num_vectors;
  for (int pass = 0; pass < passes; ++pass) {
    // From `start` to the end, then from the beginning to `start`: no
    // division per load, which would bound the loop before L2 does.
#pragma unroll 4
    for (long long i = start + threadIdx.x; i < num_vectors; i += blockDim.x) {
      const int4 v = __ldcg(buffer + i);
      sum.x ^= v.x; sum.y ^= v.y; sum.z ^= v.z; sum.w ^= v.w;
    }
#pragma unroll 4
    for (long long i = threadIdx.x; i < start; i += blockDim.x) {
      const int4 v = __ldcg(buffer + i);
      sum.x ^= v.x; sum.y ^= v.y; sum.z ^= v.z; sum.w ^= v.w;
    }
  }
  // Never true for a zero-filled buffer; keeps the loads from being removed.
  if ((sum.x | sum.y | sum.z | sum.w) == 0x7fffffff) sink[0] = 1;
}

int main(int argc, char** argv) {
  const long long mib = argc > 1 ? std::atoll(argv[1]) : 16;
  const int passes = argc > 2 ? std::atoi(argv[2]) : 200;
  const long long bytes = mib << 20, num_vectors = bytes / 16;
  int device = 0, num_sms = 0, l2_bytes = 0;
  CHECK_CUDA(cudaGetDevice(&device));
  CHECK_CUDA(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  CHECK_CUDA(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device));
  if (bytes * 2 > l2_bytes) {
    std::fprintf(stderr, "a %lld MiB buffer may not stay in this card's %d MiB L2\n", mib,
                 l2_bytes >> 20);
  }
  int4* buffer = nullptr;
  int* sink = nullptr;
  CHECK_CUDA(cudaMalloc(&buffer, bytes));
  CHECK_CUDA(cudaMalloc(&sink, sizeof(int)));
  CHECK_CUDA(cudaMemset(buffer, 0, bytes));
  cudaEvent_t begin, end;
  CHECK_CUDA(cudaEventCreate(&begin));
  CHECK_CUDA(cudaEventCreate(&end));
  const int blocks = num_sms * 2, threads = 1024;
  ReadKernel<<<blocks, threads>>>(buffer, num_vectors, 1, sink);  // warm-up: fills L2
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaEventRecord(begin));
  ReadKernel<<<blocks, threads>>>(buffer, num_vectors, passes, sink);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaEventRecord(end));
  CHECK_CUDA(cudaEventSynchronize(end));
  float ms = 0.f;
  CHECK_CUDA(cudaEventElapsedTime(&ms, begin, end));
  const double read = static_cast<double>(bytes) * passes * blocks;
  std::printf("{\"sms\": %d, \"l2_mib\": %d, \"buffer_mib\": %lld, \"passes\": %d, "
              "\"ms\": %.3f, \"tb_per_s\": %.2f}\n",
              num_sms, l2_bytes >> 20, mib, passes, ms, read / (ms * 1e-3) / 1e12);
  return 0;
}
