// GPU OpKernels of Escort>CsrConv2D and Escort>CsrConv2DV2. Built only in
// the GPU flavour (GOOGLE_CUDA=1).
//
// row_offsets and column_indices are host-memory inputs, so that they are
// validated on the host before anything is launched. Validating and
// uploading them costs time linear in the filter, so each kernel keeps the
// last filter it validated, with its device copy, and reuses it while the
// op is fed the very same host buffers: the kernel holds a reference to
// them, and TensorFlow copies a buffer that is still referenced before
// updating a variable in place, so a buffer seen again holds the values
// that were validated. A different buffer with the same contents (eager
// calls, which convert the caller's arrays into new tensors every call) is
// served too, after a byte comparison, which costs far less than
// validating, uploading and synchronising the stream. Any other buffer is
// validated and uploaded anew.
// The tile choice is cached by the layer-1 launcher, keyed by geometry.
//
// float16/bfloat16 filters that are 2:4 along the input channels run on
// sparse tensor cores (sparse24_conv_gpu.h) unless the engine attr says
// CUDA_CORES: the 2:4 layout is derived from the CSR indices when they are
// validated, and kept with them. The values packed into that layout are
// kept the same way, with a reference to the values buffer they came from,
// so a layer whose values tensor is the same buffer call after call (a
// variable read, a constant) packs them once. V2's float values and bias
// (mixed precision) are rounded to the 16-bit type then, and kept so too.
#if GOOGLE_CUDA
#ifndef EIGEN_USE_GPU
#define EIGEN_USE_GPU  // Eigen::GpuDevice, for the op's stream
#endif

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>

#include "cc/kernels/cast_gpu.h"
#include "cc/kernels/csr_conv_gpu.h"
#include "cc/kernels/sparse24_conv.h"
#include "cc/kernels/sparse24_conv_gpu.h"
#include "cc/tf/csr_conv_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/mutex.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tensorflow {
namespace escort_tf {
namespace {

using GPUDevice = Eigen::GpuDevice;

absl::Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  return errors::Internal("Escort>CsrConv2D: ", what, " failed: ",
                          cudaGetErrorString(error));
}

// Whether `input` is the very buffer `kept` references (see the file
// comment for why that means unchanged contents).
bool IsKeptBuffer(const Tensor& kept, const Tensor& input) {
  return kept.SharesBufferWith(input) && kept.NumElements() == input.NumElements();
}

// Whether host tensor `input` holds what `kept` holds: the kept buffer, or a
// copy of it (see the file comment).
bool HoldsKeptContents(const Tensor& kept, const Tensor& input) {
  return IsKeptBuffer(kept, input) ||
         (kept.dtype() == input.dtype() && kept.NumElements() == input.NumElements() &&
          kept.tensor_data() == input.tensor_data());
}

// A validated CSR index pair and its device copy, or its 2:4 layout.
struct DeviceFilter {
  Tensor host_row_offsets, host_column_indices;
  Tensor row_offsets, column_indices;  // device memory, for CUDA cores
  // Device memory, for tensor cores (Sparse24Layout); empty otherwise.
  Tensor sparse24_value_index, sparse24_metadata;

  bool UsesTensorCores() const { return sparse24_metadata.NumElements() > 0; }

  bool Serves(const Tensor& row_offsets_in,
              const Tensor& column_indices_in) const {
    return HoldsKeptContents(host_row_offsets, row_offsets_in) &&
           HoldsKeptContents(host_column_indices, column_indices_in);
  }
};

// A 2:4 filter's values in its tensor-core layout, packed on the device from
// the values buffer referenced here, and for a float bias of a 16-bit op
// (V2) that bias rounded to the op's type. The references make TensorFlow
// copy those buffers before updating a variable in place, as for the
// indices.
struct PackedValues {
  std::shared_ptr<const DeviceFilter> filter;
  Tensor source_values;
  Tensor packed;  // device memory, DeviceFilter::sparse24_value_index's size
  Tensor source_bias, rounded_bias;  // empty unless a bias was rounded

  // `round_bias`: whether this call's bias needs rounding (and so must be
  // the buffer rounded_bias came from).
  bool Serves(const std::shared_ptr<const DeviceFilter>& filter_in,
              const Tensor& values_in, const Tensor& bias_in,
              bool round_bias) const {
    return filter == filter_in && IsKeptBuffer(source_values, values_in) &&
           (!round_bias || (rounded_bias.NumElements() > 0 &&
                            IsKeptBuffer(source_bias, bias_in)));
  }
};

absl::Status Upload(const void* host, int64_t bytes, Tensor* device,
                    cudaStream_t stream) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpyAsync(device->data(), host, bytes,
                                    cudaMemcpyHostToDevice, stream),
                    "copying the filter's indices to the device");
}

// A device copy of `host`, allocated as a temporary of `context`.
template <typename Element>
absl::Status AllocateAndUpload(OpKernelContext* context, DataType type,
                               const Element* host, int64_t size,
                               Tensor* device, cudaStream_t stream) {
  TF_RETURN_IF_ERROR(context->allocate_temp(type, TensorShape({size}), device));
  return Upload(host, size * static_cast<int64_t>(sizeof(Element)), device,
                stream);
}

enum class Engine { kAuto, kCudaCores, kTensorCores24 };

// 16-bit float types the op serves on the GPU by converting to fp32 around
// the fp32 kernel; Eigen's types have the layout of CUDA's.
template <typename T>
constexpr escort::HalfType HalfTypeOf() {
  return std::is_same_v<T, Eigen::half> ? escort::HalfType::kFloat16
                                        : escort::HalfType::kBFloat16;
}

// `tensor` as device floats: the tensor itself for float, else a converted
// temporary.
template <typename T>
absl::Status AsFloat(OpKernelContext* context, const Tensor& tensor,
                     cudaStream_t stream, Tensor* converted) {
  if constexpr (std::is_same_v<T, float>) {
    *converted = tensor;
    return absl::OkStatus();
  } else {
    TF_RETURN_IF_ERROR(
        context->allocate_temp(DT_FLOAT, tensor.shape(), converted));
    return CudaStatus(
        escort::HalfToFloatGpu(HalfTypeOf<T>(), tensor.data(),
                               converted->flat<float>().data(),
                               tensor.NumElements(), stream),
        "converting an input to float");
  }
}

// The device float `tensor` rounded to the 16-bit T in a new temporary (the
// reverse of AsFloat); `what` names it in a launch error.
template <typename T>
absl::Status AsHalf(OpKernelContext* context, const Tensor& tensor,
                    cudaStream_t stream, Tensor* rounded, const char* what) {
  TF_RETURN_IF_ERROR(
      context->allocate_temp(DataTypeToEnum<T>::value, tensor.shape(), rounded));
  return CudaStatus(
      escort::FloatToHalfGpu(HalfTypeOf<T>(), tensor.flat<float>().data(),
                             rounded->data(), tensor.NumElements(), stream),
      what);
}

// T: the input's and output's type; U: the values' and bias's (T, or float
// for V2's mixed precision).
template <typename T, typename U>
class CsrConv2DGpuOp : public CsrConv2DOpBase {
 public:
  explicit CsrConv2DGpuOp(OpKernelConstruction* context)
      : CsrConv2DOpBase(context) {
    std::string engine;
    OP_REQUIRES_OK(context, context->GetAttr("engine", &engine));
    engine_ = engine == "CUDA_CORES"         ? Engine::kCudaCores
              : engine == "TENSOR_CORES_2_4" ? Engine::kTensorCores24
                                             : Engine::kAuto;
  }

  void Compute(OpKernelContext* context) override {
    escort::ConvGeometry geometry;
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context,
                   ValidateShapesAndAllocate(context, &geometry, &output));
    const cudaStream_t stream = context->eigen_device<GPUDevice>().stream();
    std::shared_ptr<const DeviceFilter> filter;
    OP_REQUIRES_OK(context, GetFilter(context, geometry, stream, &filter));
    if (output->NumElements() == 0) return;
    if constexpr (!std::is_same_v<T, float>) {
      if (filter->UsesTensorCores()) {
        OP_REQUIRES_OK(context,
                       ComputeOnTensorCores(context, geometry, filter,
                                            stream, output));
        return;
      }
    }

    Tensor input, values, bias, float_output = *output;
    OP_REQUIRES_OK(context, AsFloat<T>(context, context->input(0), stream,
                                       &input));
    OP_REQUIRES_OK(context, AsFloat<U>(context, context->input(3), stream,
                                       &values));
    OP_REQUIRES_OK(context, AsFloat<U>(context, context->input(4), stream,
                                       &bias));
    if constexpr (!std::is_same_v<T, float>) {
      OP_REQUIRES_OK(context, context->allocate_temp(
                                  DT_FLOAT, output->shape(), &float_output));
    }
    const cudaError_t launched = escort::CsrConv2DGpu(
        geometry, input.flat<float>().data(),
        filter->row_offsets.flat<int32_t>().data(),
        filter->column_indices.flat<int32_t>().data(),
        values.flat<float>().data(), values.NumElements(),
        bias.NumElements() > 0 ? bias.flat<float>().data() : nullptr,
        activation(), float_output.flat<float>().data(), stream);
    // Every input was validated, so the launcher's one invalid-value case
    // is a window whose tile does not fit in shared memory.
    OP_REQUIRES(
        context, launched != cudaErrorInvalidValue,
        errors::InvalidArgument(
            "dilations/filter_shape: the dilated filter window (",
            (geometry.R - 1) * geometry.dilation_h + 1, " x ",
            (geometry.S - 1) * geometry.dilation_w + 1,
            ") is too large for the GPU kernel's shared-memory tile; run "
            "this op on the CPU (tf.device('/CPU:0'))"));
    OP_REQUIRES_OK(context, CudaStatus(launched,
                                       "launching the sparse convolution "
                                       "kernel"));
    if constexpr (!std::is_same_v<T, float>) {
      OP_REQUIRES_OK(
          context,
          CudaStatus(escort::FloatToHalfGpu(
                         HalfTypeOf<T>(), float_output.flat<float>().data(),
                         output->data(), output->NumElements(), stream),
                     "converting the output from float"));
    }
  }

 private:
  // The device copy of this call's CSR indices: the cached one when the
  // inputs are the buffers it was made from, else a newly validated and
  // uploaded one, which then replaces it. Held through a shared_ptr so that
  // a concurrent replacement leaves this call's copy alive until launch;
  // the kernels that read it later are ordered on the stream, where the
  // allocator reuses freed memory only after them.
  absl::Status GetFilter(OpKernelContext* context,
                         const escort::ConvGeometry& geometry,
                         cudaStream_t stream,
                         std::shared_ptr<const DeviceFilter>* filter) {
    const Tensor& row_offsets = context->input(1);
    const Tensor& column_indices = context->input(2);
    {
      tf_shared_lock lock(mu_);
      if (filter_ != nullptr && filter_->Serves(row_offsets, column_indices)) {
        // The values are read anew each call: only their count is checked.
        if (context->input(3).NumElements() != column_indices.NumElements()) {
          return errors::InvalidArgument(
              "values must have as many entries as column_indices (",
              column_indices.NumElements(), "), got ",
              context->input(3).NumElements());
        }
        *filter = filter_;
        return absl::OkStatus();
      }
    }
    TF_RETURN_IF_ERROR(ValidateFilter(context, geometry));
    auto fresh = std::make_shared<DeviceFilter>();
    fresh->host_row_offsets = row_offsets;
    fresh->host_column_indices = column_indices;
    escort::Sparse24Layout layout;
    TF_RETURN_IF_ERROR(ChooseEngine(context, geometry, &layout));
    if (!layout.metadata.empty()) {
      TF_RETURN_IF_ERROR(AllocateAndUpload(
          context, DT_INT32, layout.value_index.data(),
          static_cast<int64_t>(layout.value_index.size()),
          &fresh->sparse24_value_index, stream));
      TF_RETURN_IF_ERROR(AllocateAndUpload(
          context, DT_UINT32, layout.metadata.data(),
          static_cast<int64_t>(layout.metadata.size()),
          &fresh->sparse24_metadata, stream));
    } else {
      TF_RETURN_IF_ERROR(AllocateAndUpload(
          context, DT_INT32, row_offsets.flat<int32_t>().data(),
          row_offsets.NumElements(), &fresh->row_offsets, stream));
      TF_RETURN_IF_ERROR(AllocateAndUpload(
          context, DT_INT32, column_indices.flat<int32_t>().data(),
          column_indices.NumElements(), &fresh->column_indices, stream));
    }
    // The host buffers (the inputs, `layout`) may be pinned, so the copies
    // may still be reading them; they must outlive the copies even if this
    // entry is replaced at once. Waiting here costs once per new filter,
    // not per call.
    TF_RETURN_IF_ERROR(
        CudaStatus(cudaStreamSynchronize(stream), "copying the CSR indices"));
    mutex_lock lock(mu_);
    filter_ = fresh;
    *filter = std::move(fresh);
    return absl::OkStatus();
  }

  // Fills `layout` when this call runs on tensor cores, leaves it empty for
  // CUDA cores, and fails when the engine attr asks for tensor cores that
  // cannot serve it. Called once per new filter: it is linear in the filter.
  absl::Status ChooseEngine(OpKernelContext* context,
                            const escort::ConvGeometry& geometry,
                            escort::Sparse24Layout* layout) const {
    if (engine_ == Engine::kCudaCores) return absl::OkStatus();
    std::string why_not;
    if (std::is_same_v<T, float>) {
      why_not = "it needs float16 or bfloat16 input, got float32";
    } else if (geometry.data_format != escort::DataFormat::kNHWC) {
      why_not = "it needs data_format NHWC";
    } else if (!escort::Sparse24Supported()) {
      why_not = "this GPU has no sparse tensor cores (compute capability 8.0 "
                "or newer needed) or this build has no code for it";
    } else {
      why_not = escort::BuildSparse24Layout(
          geometry.K, geometry.R, geometry.S, geometry.C,
          context->input(1).flat<int32_t>().data(),
          context->input(2).flat<int32_t>().data(), layout);
    }
    if (why_not.empty()) return absl::OkStatus();
    layout->metadata.clear();
    if (engine_ == Engine::kAuto) return absl::OkStatus();
    return errors::InvalidArgument("engine TENSOR_CORES_2_4 cannot run this "
                                   "op: ", why_not);
  }

  // This call's values in the 2:4 layout of `filter` (and V2's float bias
  // rounded to T): the cached ones when they came from the same buffers for
  // the same filter, else new ones, which then replace them. Shared and kept
  // alive as in GetFilter; the packing is ordered on the stream before any
  // launch that reads it.
  absl::Status GetPackedValues(OpKernelContext* context,
                               std::shared_ptr<const DeviceFilter> filter,
                               cudaStream_t stream,
                               std::shared_ptr<const PackedValues>* packed) {
    const Tensor& values = context->input(3);
    const Tensor& bias = context->input(4);
    constexpr bool kRounds = !std::is_same_v<T, U>;
    const bool round_bias = kRounds && bias.NumElements() > 0;
    {
      tf_shared_lock lock(mu_);
      if (packed_values_ != nullptr &&
          packed_values_->Serves(filter, values, bias, round_bias)) {
        *packed = packed_values_;
        return absl::OkStatus();
      }
    }
    auto fresh = std::make_shared<PackedValues>();
    fresh->filter = filter;
    fresh->source_values = values;
    const void* packable_values = values.data();
    Tensor rounded_values;
    if constexpr (kRounds) {
      TF_RETURN_IF_ERROR(AsHalf<T>(context, values, stream, &rounded_values,
                                   "rounding the float filter values"));
      packable_values = rounded_values.data();
      if (round_bias) {
        fresh->source_bias = bias;
        TF_RETURN_IF_ERROR(AsHalf<T>(context, bias, stream, &fresh->rounded_bias,
                                     "rounding the float bias"));
      }
    }
    const int64_t num_packed = filter->sparse24_value_index.NumElements();
    TF_RETURN_IF_ERROR(context->allocate_temp(DataTypeToEnum<T>::value,
                                              TensorShape({num_packed}),
                                              &fresh->packed));
    TF_RETURN_IF_ERROR(CudaStatus(
        escort::PackSparse24ValuesGpu(
            filter->sparse24_value_index.flat<int32_t>().data(), num_packed,
            packable_values, fresh->packed.data(), stream),
        "packing the 2:4 filter values"));
    mutex_lock lock(mu_);
    packed_values_ = fresh;
    *packed = std::move(fresh);
    return absl::OkStatus();
  }

  absl::Status ComputeOnTensorCores(
      OpKernelContext* context, const escort::ConvGeometry& geometry,
      std::shared_ptr<const DeviceFilter> filter, cudaStream_t stream,
      Tensor* output) {
    std::shared_ptr<const PackedValues> packed;
    TF_RETURN_IF_ERROR(GetPackedValues(context, filter, stream, &packed));
    // Convolutions whose grid would leave multiprocessors idle split their
    // filter columns (split-K) into fp32 partials held in this workspace.
    size_t workspace_bytes = 0;
    TF_RETURN_IF_ERROR(CudaStatus(
        escort::Sparse24WorkspaceBytes(geometry, &workspace_bytes),
        "sizing the 2:4 convolution's workspace"));
    Tensor workspace;
    if (workspace_bytes > 0) {
      TF_RETURN_IF_ERROR(context->allocate_temp(
          DT_INT8, TensorShape({static_cast<int64_t>(workspace_bytes)}),
          &workspace));
    }
    const Tensor& bias = std::is_same_v<T, U> ? context->input(4)
                                              : packed->rounded_bias;
    return CudaStatus(
        escort::Sparse24Conv2DGpu(
            HalfTypeOf<T>(), geometry, context->input(0).data(),
            packed->packed.data(),
            filter->sparse24_metadata.flat<uint32_t>().data(),
            bias.NumElements() > 0 ? bias.data() : nullptr, activation(),
            output->data(), stream,
            workspace_bytes > 0 ? workspace.data() : nullptr, workspace_bytes),
        "launching the 2:4 tensor-core convolution");
  }

  Engine engine_ = Engine::kAuto;
  mutex mu_;
  std::shared_ptr<const DeviceFilter> filter_ TF_GUARDED_BY(mu_);
  std::shared_ptr<const PackedValues> packed_values_ TF_GUARDED_BY(mu_);
};

#define REGISTER_GPU(T)                                      \
  REGISTER_KERNEL_BUILDER(Name("Escort>CsrConv2D")           \
                              .Device(DEVICE_GPU)            \
                              .TypeConstraint<T>("T")        \
                              .HostMemory("row_offsets")     \
                              .HostMemory("column_indices"), \
                          CsrConv2DGpuOp<T, T>)
REGISTER_GPU(float);
REGISTER_GPU(Eigen::half);
REGISTER_GPU(Eigen::bfloat16);
#undef REGISTER_GPU
#define REGISTER_GPU(T, U)                                   \
  REGISTER_KERNEL_BUILDER(Name("Escort>CsrConv2DV2")         \
                              .Device(DEVICE_GPU)            \
                              .TypeConstraint<T>("T")        \
                              .TypeConstraint<U>("U")        \
                              .HostMemory("row_offsets")     \
                              .HostMemory("column_indices"), \
                          CsrConv2DGpuOp<T, U>);
ESCORT_CSR_CONV2D_V2_TYPES(REGISTER_GPU)
#undef REGISTER_GPU

}  // namespace
}  // namespace escort_tf
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
