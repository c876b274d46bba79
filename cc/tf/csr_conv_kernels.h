// What the CPU and GPU OpKernels of Escort>CsrConv2D share: attribute
// parsing and the validation of every input, done before any kernel runs.
#ifndef ESCORT_CC_TF_CSR_CONV_KERNELS_H_
#define ESCORT_CC_TF_CSR_CONV_KERNELS_H_

#include <cstdint>
#include <vector>

#include "cc/kernels/csr_conv.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace escort_tf {

class CsrConv2DOpBase : public OpKernel {
 public:
  explicit CsrConv2DOpBase(OpKernelConstruction* context);

 protected:
  // Checks every input (row_offsets and column_indices must be in host
  // memory), computes the geometry and allocates the output. The caller
  // launches no kernel on an error or an empty output.
  absl::Status ValidateAndAllocate(OpKernelContext* context,
                                   escort::ConvGeometry* geometry,
                                   Tensor** output);

  // ValidateAndAllocate in two parts, for a kernel that keeps a filter it
  // has already validated: ValidateShapesAndAllocate checks everything but
  // the contents of the CSR arrays (their ranks, the attributes, the
  // geometry, the bias length) in constant time; ValidateFilter then checks
  // the CSR arrays themselves, in time linear in their size.
  absl::Status ValidateShapesAndAllocate(OpKernelContext* context,
                                         escort::ConvGeometry* geometry,
                                         Tensor** output);
  absl::Status ValidateFilter(OpKernelContext* context,
                              const escort::ConvGeometry& geometry) const;

  escort::Activation activation() const { return activation_; }
  int64_t in_channels() const { return filter_shape_[2]; }

 private:
  absl::Status ValidateShapes(OpKernelContext* context,
                              escort::ConvGeometry* geometry) const;
  absl::Status AllocateOutput(OpKernelContext* context,
                              const escort::ConvGeometry& geometry,
                              Tensor** output) const;

  escort::ConvAttrs attrs_;
  std::vector<int64_t> filter_shape_;
  escort::Activation activation_ = escort::Activation::kNone;
};

// The (T, U) pairs Escort>CsrConv2DV2 has kernels for, on every device: the
// values' type U is T, or float for a 16-bit T (mixed precision). X(T, U)
// is applied to each pair.
#define ESCORT_CSR_CONV2D_V2_TYPES(X) \
  X(float, float)                     \
  X(Eigen::half, Eigen::half)         \
  X(Eigen::half, float)               \
  X(Eigen::bfloat16, Eigen::bfloat16) \
  X(Eigen::bfloat16, float)

}  // namespace escort_tf
}  // namespace tensorflow

#endif  // ESCORT_CC_TF_CSR_CONV_KERNELS_H_
