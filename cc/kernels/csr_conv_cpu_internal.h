// Internal hooks of the CPU kernel, for its test and benchmark only.
#ifndef ESCORT_CC_KERNELS_CSR_CONV_CPU_INTERNAL_H_
#define ESCORT_CC_KERNELS_CSR_CONV_CPU_INTERNAL_H_

#include <cstdint>

#include "cc/kernels/csr_conv.h"

namespace escort {
namespace internal {

enum class CpuIsa { kScalar, kAvx2, kAvx512 };

// Whether this CPU (and OS) can run the code path for `isa`.
bool CpuSupportsIsa(CpuIsa isa);

// The path CsrConv2DCpu takes: the one the environment variable
// ESCORT_CPU_ISA=scalar|avx2|avx512 names if the CPU supports it (an unknown
// or unsupported name is ignored), else the fastest supported one (AVX2 on
// AMD, AVX-512 elsewhere). Read once per process.
CpuIsa SelectedCpuIsa();

const char* CpuIsaName(CpuIsa isa);

// CsrConv2DCpu forced onto `isa`, which must satisfy CpuSupportsIsa().
void CsrConv2DCpuWithIsa(CpuIsa isa, const ConvGeometry& geometry,
                         const float* input, const int32_t* row_offsets,
                         const int32_t* column_indices, const float* values,
                         const float* bias, Activation activation,
                         float* output, const ParallelFor& parallel_for);

// How many input-channel blocks CsrConv2DCpuWithIsa(isa, geometry, ...)
// splits the filter's rows into (1: none), for tests that must cover both.
int64_t CpuInputChannelBlocks(CpuIsa isa, const ConvGeometry& geometry,
                              const int32_t* row_offsets,
                              const int32_t* column_indices);

}  // namespace internal
}  // namespace escort

#endif  // ESCORT_CC_KERNELS_CSR_CONV_CPU_INTERNAL_H_
