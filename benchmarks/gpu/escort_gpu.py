"""ctypes loader for libescort_gpu.so plus the helpers every harness script shares.

No TensorFlow: geometry is resolved here exactly as ComputeConvGeometry (and
tf.nn.conv2d) does, and CSR filters are built from dense torch tensors.
"""

import ctypes
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

LIB_PATH = os.environ.get("ESCORT_GPU_LIB", os.path.join(HERE, "build", "libescort_gpu.so"))
_lib = None

ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 2}


def lib():
    global _lib
    if _lib is None:
        _lib = ctypes.CDLL(LIB_PATH)
        _lib.escort_csr_conv2d.restype = ctypes.c_int
        _lib.escort_csr_conv2d.argtypes = [ctypes.c_void_p] * 5 + [
            ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
            ctypes.c_void_p, ctypes.c_void_p]
        _lib.escort_choose_config.restype = None
        _lib.escort_choose_config.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int,
                                              ctypes.c_int,
                                              ctypes.c_void_p]
        _lib.escort_error_string.restype = ctypes.c_char_p
        _lib.escort_error_string.argtypes = [ctypes.c_int]
    return _lib


def out_size_and_pad(size, k, stride, dilation, padding, explicit=(0, 0)):
    """Output size and (before, after) padding, as tf.nn.conv2d computes them."""
    eff = (k - 1) * dilation + 1
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + eff - size, 0)
        return out, (total // 2, total - total // 2)
    if padding == "VALID":
        return (size - eff) // stride + 1, (0, 0)
    lo, hi = explicit
    return (size + lo + hi - eff) // stride + 1, (lo, hi)


class Geometry:
    """Mirror of escort::ConvGeometry packed for the C ABI."""

    def __init__(self, N, H, W, C, K, R, S, stride=(1, 1), dilation=(1, 1), padding="SAME",
                 explicit=((0, 0), (0, 0)), nhwc=True):
        self.N, self.H, self.W, self.C, self.K, self.R, self.S = N, H, W, C, K, R, S
        self.stride, self.dilation, self.nhwc = stride, dilation, nhwc
        self.P, (self.pt, self.pb) = out_size_and_pad(H, R, stride[0], dilation[0], padding,
                                                      explicit[0])
        self.Q, (self.pl, self.pr) = out_size_and_pad(W, S, stride[1], dilation[1], padding,
                                                      explicit[1])
        self.packed = (ctypes.c_int64 * 18)(
            N, H, W, C, K, R, S, self.P, self.Q, stride[0], stride[1], dilation[0],
            dilation[1], self.pt, self.pl, self.pb, self.pr, 1 if nhwc else 0)

    def valid(self):
        return self.P > 0 and self.Q > 0

    def input_shape(self):
        return (self.N, self.H, self.W, self.C) if self.nhwc else (self.N, self.C, self.H, self.W)

    def output_shape(self):
        return (self.N, self.P, self.Q, self.K) if self.nhwc else (self.N, self.K, self.P, self.Q)


def random_filter(K, C, R, S, density, generator=None, device="cuda", empty_rows=0.0):
    """Dense OIHW float32 filter with round(density * size) random nonzeros.

    `empty_rows` is the fraction of output channels forced to all zeros.
    """
    total = K * C * R * S
    nnz = int(round(density * total))
    w = torch.zeros(total, dtype=torch.float32)
    if nnz > 0:
        idx = torch.randperm(total, generator=generator)[:nnz]
        w[idx] = torch.randn(nnz, generator=generator)
    w = w.reshape(K, C, R, S)
    if empty_rows > 0:
        rows = torch.rand(K, generator=generator) < empty_rows
        w[rows] = 0
    return w.to(device)


class CsrFilter:
    """CSR of an OIHW filter in the escort column order j = (r*S + s)*C + c."""

    def __init__(self, w_oihw):
        K = w_oihw.shape[0]
        dense = w_oihw.permute(0, 2, 3, 1).reshape(K, -1).contiguous()
        mask = dense != 0
        counts = mask.sum(1)
        self.row_offsets = torch.zeros(K + 1, dtype=torch.int32, device=dense.device)
        self.row_offsets[1:] = torch.cumsum(counts, 0).to(torch.int32)
        nz = mask.nonzero()  # row-major: ascending columns within a row
        self.column_indices = nz[:, 1].to(torch.int32).contiguous()
        self.values = dense[mask].contiguous()
        self.nnz = int(self.values.numel())
        if self.nnz == 0:  # keep valid device pointers
            self.column_indices = torch.zeros(1, dtype=torch.int32, device=dense.device)
            self.values = torch.zeros(1, dtype=torch.float32, device=dense.device)


def conv(geo, x, csr, bias, activation, out, config=None, stream=None):
    """Runs the escort kernel; raises on a CUDA error."""
    cfg = None
    if config is not None:
        cfg = (ctypes.c_int * 11)(*config)
    if stream is None:
        stream = torch.cuda.current_stream().cuda_stream
    err = lib().escort_csr_conv2d(
        ctypes.addressof(geo.packed), x.data_ptr(), csr.row_offsets.data_ptr(),
        csr.column_indices.data_ptr(), csr.values.data_ptr(), csr.nnz,
        bias.data_ptr() if bias is not None else None, ACTIVATIONS[activation],
        out.data_ptr(), ctypes.addressof(cfg) if cfg is not None else None, stream)
    if err != 0:
        raise RuntimeError("escort kernel: %s (%d)" % (lib().escort_error_string(err).decode(), err))


def choose_config(geo, nnz, num_sms, clusters=None):
    """The heuristic's tile; `clusters` defaults to whether the GPU is sm_90+."""
    if clusters is None:
        clusters = torch.cuda.get_device_capability()[0] >= 9
    cfg = (ctypes.c_int * 11)()
    lib().escort_choose_config(ctypes.addressof(geo.packed), nnz, num_sms, int(clusters),
                               ctypes.addressof(cfg))
    return tuple(cfg)


def torch_reference(geo, x, w_oihw, bias, activation, dtype=torch.float64):
    """tf.nn.conv2d semantics through torch (asymmetric padding via F.pad)."""
    import torch.nn.functional as F
    xc = x.to(dtype)
    if geo.nhwc:
        xc = xc.permute(0, 3, 1, 2)
    xc = F.pad(xc, (geo.pl, geo.pr, geo.pt, geo.pb))
    y = F.conv2d(xc, w_oihw.to(dtype), None if bias is None else bias.to(dtype),
                 stride=geo.stride, dilation=geo.dilation)
    # TF (and our kernel) crop to P x Q; F.pad + conv gives exactly that.
    if activation == "relu":
        y = torch.relu(y)
    elif activation == "relu6":
        y = torch.clamp(y, 0, 6)
    if geo.nhwc:
        y = y.permute(0, 2, 3, 1)
    return y.contiguous()
