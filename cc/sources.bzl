"""The one list of the op's C++/CUDA sources.

Read by BUILD (load) and by setup.py (this file is also valid Python), so the
two builds compile the same files. Paths are relative to the repository root.
"""

# Layer 1: framework-free kernels (no TensorFlow headers).
KERNEL_HDRS = [
    "cc/kernels/csr_conv.h",
    "cc/kernels/csr_conv_cpu_internal.h",
    "cc/kernels/csr_conv_cpu_kernels.h",
]

KERNEL_SRCS = [
    "cc/kernels/csr_validate.cc",
    "cc/kernels/csr_conv_reference.cc",
    "cc/kernels/csr_conv_cpu.cc",
    "cc/kernels/csr_conv_cpu_x86.cc",
]

# Layer 1 CUDA: compiled with nvcc, only when a CUDA toolkit is present.
GPU_KERNEL_HDRS = [
    "cc/kernels/cast_gpu.h",
    "cc/kernels/csr_conv_gpu.h",
    "cc/kernels/sparse24_conv_gpu.h",
    "cc/kernels/sparse24_conv_device.cuh",
    "cc/kernels/sparse24_conv_wgmma.h",
]

GPU_KERNEL_SRCS = [
    "cc/kernels/cast_gpu.cu",
    "cc/kernels/csr_conv_gpu.cu",
    "cc/kernels/sparse24_conv_gpu.cu",
]

# Layer 1 CUDA for Hopper only: compiled for sm_90a alone (with
# -DESCORT_SPARSE24_WGMMA=1) when the build targets compute capability 9.0
# (unless ESCORT_TF_SPARSE24_WGMMA=0), else like the rest, without the
# kernel's body.
GPU_SM90A_KERNEL_SRCS = [
    "cc/kernels/sparse24_conv_wgmma.cu",
]

# Host-side parts of the CUDA kernels (the CSR kernel's tile planner, the
# 2:4 kernel's filter layout): plain C++ without CUDA headers, compiled with
# the C++ compiler into the CUDA flavour, and into their CPU tests
# (make test-cc).
GPU_PLAN_HDRS = [
    "cc/kernels/csr_conv_gpu_plan.h",
    "cc/kernels/sparse24_conv.h",
]

GPU_PLAN_SRCS = [
    "cc/kernels/csr_conv_gpu_plan.cc",
    "cc/kernels/sparse24_conv.cc",
]

# Layer 2: TensorFlow op registration and OpKernels.
TF_HDRS = [
    "cc/tf/csr_conv_attrs.h",
    "cc/tf/csr_conv_kernels.h",
    "cc/tf/pool_parallel_for.h",
]

TF_SRCS = [
    "cc/tf/csr_conv_op.cc",
    "cc/tf/csr_conv_kernels.cc",
    "cc/tf/pool_parallel_for.cc",
]

# Layer 2 GPU OpKernel: compiled with -DGOOGLE_CUDA=1 in the GPU flavour.
TF_GPU_SRCS = [
    "cc/tf/csr_conv_kernels_gpu.cc",
]
