// CHECK_CUDA for the standalone GPU tests and benchmarks beside the kernels:
// a failed CUDA call there ends the program with its location and message.
// (The op itself returns cudaError_t to its caller instead.)
#ifndef ESCORT_CC_KERNELS_CUDA_CHECK_TEST_H_
#define ESCORT_CC_KERNELS_CUDA_CHECK_TEST_H_

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CHECK_CUDA(expr)                                                \
  do {                                                                  \
    cudaError_t e_ = (expr);                                            \
    if (e_ != cudaSuccess) {                                            \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, \
                   cudaGetErrorString(e_));                             \
      std::exit(2);                                                     \
    }                                                                   \
  } while (0)

#endif  // ESCORT_CC_KERNELS_CUDA_CHECK_TEST_H_
