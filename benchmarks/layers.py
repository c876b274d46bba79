"""The layer table every benchmark runs, for the harnesses in this directory.

The table itself is `escort_tf/layer_table.py`, shipped in the package so
that `escort-tf bench` works from an installed wheel. It is loaded here by
path, not as `escort_tf.layer_table`: importing the package would import
TensorFlow, and the GPU harness (`from layers import LAYERS`) runs where only
PyTorch is installed.
"""

import importlib.util
import pathlib
import sys

_PATH = pathlib.Path(__file__).resolve().parent.parent / "escort_tf" / "layer_table.py"
_spec = importlib.util.spec_from_file_location("escort_layer_table", _PATH)
_table = importlib.util.module_from_spec(_spec)
# dataclasses resolves annotations through sys.modules while the module executes.
sys.modules[_spec.name] = _table
_spec.loader.exec_module(_table)

ConvLayer = _table.ConvLayer
LAYERS = _table.LAYERS
UNIFORM_DENSITIES = _table.UNIFORM_DENSITIES
