"""The layer table every benchmark runs: conv layers of the models Escort ran.

Each entry is one 3-D convolution at batch 1, NHWC, with the density (fraction
of nonzero weights) SkimCaffe's pruned model has in that layer. CaffeNet's
grouped layers (conv2, conv4, conv5 have two groups in Caffe) are modelled as
ungrouped convolutions over all channels at the same density.

The table ships inside the package, so `escort-tf bench` runs from an
installed wheel. It imports nothing beyond the standard library: the GPU
harness (`benchmarks/gpu/`, through `benchmarks/layers.py`) reads this file
by path on machines without TensorFlow.
"""

import dataclasses
from typing import List


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One benchmark layer: geometry plus the pruned model's density."""

    name: str
    height: int
    width: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    skimcaffe_density: float

    @property
    def out_height(self) -> int:
        return (self.height + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def out_width(self) -> int:
        return (self.width + 2 * self.padding - self.kernel) // self.stride + 1

    def dense_flops(self, batch: int) -> int:
        """Multiply-adds times two of the dense convolution."""
        return (2 * batch * self.out_height * self.out_width * self.out_channels
                * self.kernel * self.kernel * self.in_channels)

    def explicit_padding(self):
        """Padding as `[[top, bottom], [left, right]]`, as tf.nn.conv2d takes it."""
        return [[self.padding, self.padding], [self.padding, self.padding]]


LAYERS: List[ConvLayer] = [
    ConvLayer("caffenet_conv2", 27, 27, 96, 256, 5, 1, 2, 0.144),
    ConvLayer("caffenet_conv3", 13, 13, 256, 384, 3, 1, 1, 0.069),
    ConvLayer("caffenet_conv4", 13, 13, 384, 384, 3, 1, 1, 0.082),
    ConvLayer("caffenet_conv5", 13, 13, 384, 256, 3, 1, 1, 0.115),
    ConvLayer("googlenet_4a_3x3", 14, 14, 96, 208, 3, 1, 1, 0.10),
    ConvLayer("resnet50_res2_3x3", 56, 56, 64, 64, 3, 1, 1, 0.15),
    ConvLayer("resnet50_res3_3x3", 28, 28, 128, 128, 3, 1, 1, 0.07),
    ConvLayer("resnet50_res4_3x3", 14, 14, 256, 256, 3, 1, 1, 0.03),
    ConvLayer("resnet50_res5_3x3", 7, 7, 512, 512, 3, 1, 1, 0.02),
    ConvLayer("vgg16_conv3_2", 56, 56, 256, 256, 3, 1, 1, 0.10),
]

# Uniform densities every benchmark also runs, besides each layer's own.
UNIFORM_DENSITIES = (0.30, 0.10)  # 70% and 90% sparsity
