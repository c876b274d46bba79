"""Runs the escort kernel a few times on one benchmark layer, for Nsight Compute.

  ncu -k regex:CsrConvKernel -s 2 -c 1 python3 profile.py vgg16_conv3_2 32 0.1 [cfg...]
"""

import sys

import torch

import escort_gpu as eg
from layers import LAYERS


def main():
    name, batch, density = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    cfg = tuple(int(v) for v in sys.argv[4:]) or None
    layer = next(l for l in LAYERS if l.name == name)
    gen = torch.Generator().manual_seed(3)
    w = eg.random_filter(layer.out_channels, layer.in_channels, layer.kernel, layer.kernel,
                         density, gen)
    csr = eg.CsrFilter(w)
    pad = layer.padding
    geo = eg.Geometry(batch, layer.height, layer.width, layer.in_channels, layer.out_channels,
                      layer.kernel, layer.kernel, (layer.stride,) * 2, (1, 1), "EXPLICIT",
                      ((pad, pad), (pad, pad)), True)
    x = torch.randn(geo.input_shape(), generator=gen).cuda()
    out = torch.empty(geo.output_shape(), device="cuda")
    for _ in range(4):
        eg.conv(geo, x, csr, None, "none", out, cfg)
    torch.cuda.synchronize()
    print("config", cfg or eg.choose_config(geo, csr.nnz, 132))


if __name__ == "__main__":
    main()
