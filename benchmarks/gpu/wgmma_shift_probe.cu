// Can a wgmma B operand (K-major, 128-byte swizzle) start at any 128-byte
// row of a staged tile, not only on a 1024-byte swizzle atom? The halo-reuse
// plan in NOTES.md ("Bytes per FLOP") needs it: each filter tap reads the
// same staged input halo from a start shifted by (r x halo width + s) rows.
// The descriptor has a 3-bit base-offset field (bits 49-51): the PTX ISA
// gives it as (pattern start >> 7) & 7 where the swizzle pattern does not
// start on a 1024-byte boundary, and CUTLASS always sets 0. Whether a start
// off the atom, in a tile whose pattern starts on one, needs 0 or the start's
// own row phase is what this probe finds out.
//
// One warpgroup runs wgmma.m64n16k16 (f16 in, f32 out; two 8-row groups of B
// 8, 10 or 18 rows apart) with A from a
// 1024-byte-aligned tile and B starting `shift` rows (0-23) and `k_step` 32-byte
// K steps (0-3) into a tile whose every row is swizzled by its own address
// (16-byte chunk c of the row at byte address x sits at chunk c ^ (x / 128 % 8)),
// for each base-offset rule below, against the exact integer product.
//   nvcc -O3 -I../.. -gencode=arch=compute_90a,code=sm_90a wgmma_shift_probe.cu -o wgmma_shift_probe
//   ./wgmma_shift_probe
// Prints one JSON line per rule: the (group stride, shift, k_step) cases that did
// not match, and how many did.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "cc/kernels/cuda_check_test.h"

constexpr int kRowHalves = 64;  // 128 bytes: one swizzled row
constexpr int kN = 16;
// B's second 8-row group sits this many rows after its first (the stride byte
// offset): 8 is the canonical 1024 bytes; 10 and 18 are halo widths (an 8- or
// 16-pixel tile plus a 3-wide filter's 2), which put the groups at different
// swizzle phases.
__host__ __device__ constexpr int GroupStride(int i) { return i == 0 ? 8 : i == 1 ? 10 : 18; }
constexpr int kNumStrides = 3;
constexpr int kARows = 64, kMaxShift = 24, kBRows = kMaxShift + 18 + 8, kKSteps = 4;
constexpr int kRules = 3;  // base offset: 0; (start >> 7) & 7; 8 - that, mod 8
constexpr const char* kRuleNames[kRules] = {"zero", "start_row_mod_8", "minus_start_row_mod_8"};

__device__ uint64_t Descriptor(uint32_t start, uint32_t group_stride_bytes, uint32_t base_offset) {
  return static_cast<uint64_t>((start & 0x3FFFF) >> 4) | (uint64_t{1} << 16) |
         (static_cast<uint64_t>(group_stride_bytes >> 4) << 32) |
         (static_cast<uint64_t>(base_offset & 7) << 49) |
         (uint64_t{1} << 62);
}

// Stores logical rows [rows][64 halves] from global memory at shared byte
// offset `dst` (1024-aligned) with the address-based 128-byte swizzle.
__device__ void StageSwizzled(unsigned char* smem, uint32_t smem_base, uint32_t dst,
                              const __half* rows, int num_rows) {
  for (int i = threadIdx.x; i < num_rows * 8; i += blockDim.x) {
    const int row = i / 8, chunk = i % 8;
    const uint32_t row_address = smem_base + dst + row * 128;
    const int stored = chunk ^ static_cast<int>((row_address >> 7) & 7);
    *reinterpret_cast<uint4*>(smem + dst + row * 128 + stored * 16) =
        *reinterpret_cast<const uint4*>(rows + row * kRowHalves + chunk * 8);
  }
}

// out[rule][stride][shift][k_step][64 x kN], D = A[:, 16 k_step ..] x B[rows][16 k_step ..]^T,
// B's rows shift .. shift + 7 and shift + stride .. shift + stride + 7.
__global__ void ProbeKernel(const __half* a, const __half* b, float* out) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023) & ~1023u;
  unsigned char* smem = smem_raw + (base - raw);
  StageSwizzled(smem, 0, 0, a, kARows);  // offsets relative to `base`, both 1024-aligned
  StageSwizzled(smem, 0, kARows * 128, b, kBRows);
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int rule = 0; rule < kRules; ++rule) {
    for (int stride = 0; stride < kNumStrides; ++stride) {
      for (int shift = 0; shift < kMaxShift; ++shift) {
        for (int k_step = 0; k_step < kKSteps; ++k_step) {
          const uint32_t a_start = base + k_step * 32;
          const uint32_t b_start = base + kARows * 128 + shift * 128 + k_step * 32;
          const uint32_t row_phase = (b_start >> 7) & 7;
          const uint32_t b_offset = rule == 0 ? 0 : rule == 1 ? row_phase : (8 - row_phase) & 7;
          const uint64_t a_desc = Descriptor(a_start, 1024, 0);
          const uint64_t b_desc = Descriptor(b_start, GroupStride(stride) * 128, b_offset);
          // scale-d false (D = A B): the accumulators are outputs only, so no
          // register of this wgmma is written between the fence and the mma.
          float d[8];
          asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
          asm volatile(
              "{\n.reg .pred p;\nsetp.ne.b32 p, 0, 0;\n"
              "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 "
              "{%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
              : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]),
                "=f"(d[6]), "=f"(d[7])
              : "l"(a_desc), "l"(b_desc));
          asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
          asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
          asm volatile("" : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]),
                       "+f"(d[5]), "+f"(d[6]), "+f"(d[7])::"memory");
          // d[4 j + 2 h + c]: row 16 warp + lane / 4 + 8 h, column 8 j + 2 (lane % 4) + c.
          const int index = ((rule * kNumStrides + stride) * kMaxShift + shift) * kKSteps + k_step;
          float* tile = out + index * 64 * kN;
          const int row = 16 * warp + lane / 4, col = 2 * (lane % 4);
          for (int j = 0; j < 2; ++j) {
            for (int h = 0; h < 2; ++h) {
              for (int c = 0; c < 2; ++c) {
                tile[(row + 8 * h) * kN + 8 * j + col + c] = d[4 * j + 2 * h + c];
              }
            }
          }
        }
      }
    }
  }
}

int main() {
  // Hashed small integers: exact in f16 and in f32 sums, and no two rows
  // alike, so a row read from the wrong place shows.
  auto value = [](uint32_t i, uint32_t seed) {
    i = i * 2654435761u ^ seed;
    i ^= i >> 15;
    return static_cast<float>(static_cast<int>(i % 5) - 2);
  };
  std::vector<__half> a(kARows * kRowHalves), b(kBRows * kRowHalves);
  std::vector<float> af(a.size()), bf(b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    af[i] = value(static_cast<uint32_t>(i), 0x9e37u);
    a[i] = __float2half(af[i]);
  }
  for (size_t i = 0; i < b.size(); ++i) {
    bf[i] = value(static_cast<uint32_t>(i), 0x7f4au);
    b[i] = __float2half(bf[i]);
  }
  __half *d_a = nullptr, *d_b = nullptr;
  float* d_out = nullptr;
  const size_t out_size = static_cast<size_t>(kRules) * kNumStrides * kMaxShift * kKSteps * 64 * kN;
  CHECK_CUDA(cudaMalloc(&d_a, a.size() * sizeof(__half)));
  CHECK_CUDA(cudaMalloc(&d_b, b.size() * sizeof(__half)));
  CHECK_CUDA(cudaMalloc(&d_out, out_size * sizeof(float)));
  CHECK_CUDA(cudaMemcpy(d_a, a.data(), a.size() * sizeof(__half), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_b, b.data(), b.size() * sizeof(__half), cudaMemcpyHostToDevice));
  // 1 KB of slack past B, so that a wrong rule reading past it does not fault.
  const int smem_bytes = (kARows + kBRows) * 128 + 1024 + 1024;
  ProbeKernel<<<1, 128, smem_bytes>>>(d_a, d_b, d_out);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<float> out(out_size);
  CHECK_CUDA(cudaMemcpy(out.data(), d_out, out_size * sizeof(float), cudaMemcpyDeviceToHost));
  for (int rule = 0; rule < kRules; ++rule) {
    int matched = 0;
    std::printf("{\"rule\": \"%s\", \"wrong\": [", kRuleNames[rule]);
    bool first = true;
    for (int stride = 0; stride < kNumStrides; ++stride) {
      for (int shift = 0; shift < kMaxShift; ++shift) {
        for (int k_step = 0; k_step < kKSteps; ++k_step) {
          const float* tile =
              out.data() +
              (((rule * kNumStrides + stride) * kMaxShift + shift) * kKSteps + k_step) * 64 * kN;
          bool ok = true;
          for (int m = 0; m < 64 && ok; ++m) {
            for (int n = 0; n < kN && ok; ++n) {
              const int b_row = shift + n / 8 * GroupStride(stride) + n % 8;
              float expect = 0.f;
              for (int k = 0; k < 16; ++k) {
                expect += af[m * kRowHalves + k_step * 16 + k] *
                          bf[b_row * kRowHalves + k_step * 16 + k];
              }
              ok = tile[m * kN + n] == expect;
            }
          }
          if (ok) {
            ++matched;
          } else {
            std::printf("%s[%d, %d, %d]", first ? "" : ", ", GroupStride(stride), shift,
                        k_step);
            first = false;
          }
        }
      }
    }
    std::printf("], \"matched\": %d, \"of\": %d}\n", matched,
                kNumStrides * kMaxShift * kKSteps);
  }
  CHECK_CUDA(cudaFree(d_a));
  CHECK_CUDA(cudaFree(d_b));
  CHECK_CUDA(cudaFree(d_out));
  return 0;
}
