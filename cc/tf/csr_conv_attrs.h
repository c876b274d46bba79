// Parses and checks the attributes of Escort>CsrConv2D. Shared by the shape
// function and the OpKernels so that graph construction and execution
// reject the same attributes with the same messages.
#ifndef ESCORT_CC_TF_CSR_CONV_ATTRS_H_
#define ESCORT_CC_TF_CSR_CONV_ATTRS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cc/kernels/csr_conv.h"
#include "tensorflow/core/platform/errors.h"

namespace tensorflow {
namespace escort_tf {

// `get_attr(name, &value)` is InferenceContext::GetAttr or
// OpKernelConstruction::GetAttr.
template <typename GetAttrFn>
absl::Status ParseCsrConvAttrs(GetAttrFn get_attr, escort::ConvAttrs* attrs,
                               std::vector<int64_t>* filter_shape,
                               escort::Activation* activation) {
  TF_RETURN_IF_ERROR(get_attr("filter_shape", filter_shape));
  if (filter_shape->size() != 4) {
    return errors::InvalidArgument(
        "filter_shape must have 4 entries (kh, kw, cin, cout), got ",
        filter_shape->size());
  }
  for (int64_t size : *filter_shape) {
    if (size < 1) {
      return errors::InvalidArgument(
          "filter_shape entries must be positive, got [",
          absl::StrJoin(*filter_shape, ", "), "]");
    }
  }

  std::vector<int64_t> strides, dilations, explicit_paddings;
  TF_RETURN_IF_ERROR(get_attr("strides", &strides));
  TF_RETURN_IF_ERROR(get_attr("dilations", &dilations));
  TF_RETURN_IF_ERROR(get_attr("explicit_paddings", &explicit_paddings));
  if (strides.size() != 2 || strides[0] < 1 || strides[1] < 1) {
    return errors::InvalidArgument(
        "strides must be 2 positive integers [stride_h, stride_w], got [",
        absl::StrJoin(strides, ", "), "]");
  }
  if (dilations.size() != 2 || dilations[0] < 1 || dilations[1] < 1) {
    return errors::InvalidArgument(
        "dilations must be 2 positive integers [dilation_h, dilation_w], "
        "got [",
        absl::StrJoin(dilations, ", "), "]");
  }
  attrs->stride_h = strides[0];
  attrs->stride_w = strides[1];
  attrs->dilation_h = dilations[0];
  attrs->dilation_w = dilations[1];

  std::string padding, data_format, activation_name;
  TF_RETURN_IF_ERROR(get_attr("padding", &padding));
  TF_RETURN_IF_ERROR(get_attr("data_format", &data_format));
  TF_RETURN_IF_ERROR(get_attr("activation", &activation_name));
  if (padding == "EXPLICIT") {
    if (explicit_paddings.size() != 4) {
      return errors::InvalidArgument(
          "explicit_paddings must have 4 entries [top, bottom, left, right] "
          "with padding EXPLICIT, got ",
          explicit_paddings.size());
    }
    for (int64_t amount : explicit_paddings) {
      if (amount < 0) {
        return errors::InvalidArgument(
            "explicit_paddings must be non-negative, got [",
            absl::StrJoin(explicit_paddings, ", "), "]");
      }
    }
    attrs->padding = escort::Padding::kExplicit;
    attrs->explicit_top = explicit_paddings[0];
    attrs->explicit_bottom = explicit_paddings[1];
    attrs->explicit_left = explicit_paddings[2];
    attrs->explicit_right = explicit_paddings[3];
  } else {
    if (!explicit_paddings.empty()) {
      return errors::InvalidArgument(
          "explicit_paddings must be empty unless padding is EXPLICIT, got "
          "padding ",
          padding, " with ", explicit_paddings.size(), " explicit_paddings");
    }
    attrs->padding = padding == "SAME" ? escort::Padding::kSame
                                       : escort::Padding::kValid;
  }
  attrs->data_format = data_format == "NCHW" ? escort::DataFormat::kNCHW
                                             : escort::DataFormat::kNHWC;
  *activation = activation_name == "RELU"    ? escort::Activation::kRelu
                : activation_name == "RELU6" ? escort::Activation::kRelu6
                                             : escort::Activation::kNone;
  return absl::OkStatus();
}

}  // namespace escort_tf
}  // namespace tensorflow

#endif  // ESCORT_CC_TF_CSR_CONV_ATTRS_H_
