// C ABI over the layer-1 CUDA launcher, so that the harness can call it
// through ctypes on a machine with torch/cupy and no TensorFlow. Geometry is
// passed already resolved (the harness mirrors ComputeConvGeometry).
#include <cuda_runtime.h>

#include <cstdint>

#include "cc/kernels/csr_conv_gpu.h"

namespace {

// g: N H W C K R S P Q stride_h stride_w dilation_h dilation_w
//    pad_top pad_left pad_bottom pad_right nhwc
escort::ConvGeometry ToGeometry(const int64_t* g) {
  escort::ConvGeometry geo;
  geo.N = g[0]; geo.H = g[1]; geo.W = g[2]; geo.C = g[3]; geo.K = g[4];
  geo.R = g[5]; geo.S = g[6]; geo.P = g[7]; geo.Q = g[8];
  geo.stride_h = g[9]; geo.stride_w = g[10];
  geo.dilation_h = g[11]; geo.dilation_w = g[12];
  geo.pad_top = g[13]; geo.pad_left = g[14];
  geo.pad_bottom = g[15]; geo.pad_right = g[16];
  geo.data_format = g[17] ? escort::DataFormat::kNHWC : escort::DataFormat::kNCHW;
  return geo;
}

escort::Activation ToActivation(int a) {
  return a == 1 ? escort::Activation::kRelu
                : a == 2 ? escort::Activation::kRelu6 : escort::Activation::kNone;
}

}  // namespace

extern "C" {

// config: nullptr for the heuristic, else 11 ints (pixels_per_lane,
// channels_per_warp, warps, images, tile_h, tile_w, chunk_c, row_slots,
// preload, split_c, row_parts).
int escort_csr_conv2d(const int64_t* geometry, const float* input,
                      const int32_t* row_offsets,
                      const int32_t* column_indices, const float* values,
                      int64_t nnz, const float* bias, int activation,
                      float* output, const int* config, void* stream) {
  const escort::ConvGeometry g = ToGeometry(geometry);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (config == nullptr) {
    return static_cast<int>(escort::CsrConv2DGpu(
        g, input, row_offsets, column_indices, values, nnz, bias,
        ToActivation(activation), output, s));
  }
  escort::CsrConvGpuConfig c;
  c.pixels_per_lane = config[0];
  c.channels_per_warp = config[1];
  c.warps = config[2];
  c.images = config[3];
  c.tile_h = config[4];
  c.tile_w = config[5];
  c.chunk_c = config[6];
  c.row_slots = config[7];
  c.preload = config[8];
  c.split_c = config[9];
  c.row_parts = config[10];
  return static_cast<int>(escort::CsrConv2DGpuWithConfig(
      g, input, row_offsets, column_indices, values, nnz, bias,
      ToActivation(activation), output, c, s));
}

// Writes the heuristic's choice into config[11].
void escort_choose_config(const int64_t* geometry, int64_t nnz, int num_sms,
                          int clusters, int* config) {
  const escort::CsrConvGpuConfig c = escort::ChooseCsrConvGpuConfig(
      ToGeometry(geometry), nnz, num_sms, clusters != 0);
  config[0] = c.pixels_per_lane;
  config[1] = c.channels_per_warp;
  config[2] = c.warps;
  config[3] = c.images;
  config[4] = c.tile_h;
  config[5] = c.tile_w;
  config[6] = c.chunk_c;
  config[7] = c.row_slots;
  config[8] = c.preload;
  config[9] = c.split_c;
  config[10] = c.row_parts;
}

const char* escort_error_string(int err) {
  return cudaGetErrorString(static_cast<cudaError_t>(err));
}

}  // extern "C"
