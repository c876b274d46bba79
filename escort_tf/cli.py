"""The `escort-tf` command line: `convert` a saved model, or run the `bench`marks.

    escort-tf convert SRC DST [--min-sparsity X] [--autotune [--autotune-batch-size N]
        [--no-whole-model-check]] [--fold-batch-norm] [--overwrite]
    escort-tf bench [benchmark arguments...]
    python -m escort_tf ...   # the same

`convert` loads SRC (a tf_keras SavedModel directory, `.h5` or `.keras` file;
TFMOT pruning wrappers are understood), converts it with `escort_tf.convert`,
prints the per-layer table and writes DST as a SavedModel directory. DST is
written to a temporary directory beside it and renamed into place, so a failed
run leaves no partial DST; an existing DST is replaced only with `--overwrite`.
SRC is only read.
"""

import argparse
import os
import shutil
import sys
import tempfile

import tensorflow_model_optimization as tfmot
import tf_keras

import escort_tf  # also registers the op, for sources that already hold SparseConv2D
from escort_tf import benchmark
from escort_tf.fold import foldable_layers

_EPILOG = ("Loading a converted SavedModel needs the op registered first: "
           "`import escort_tf` before tf.saved_model.load / tf_keras.models.load_model.")


class CliError(Exception):
    """A user-facing error: printed as `escort-tf: error: ...`, exit status 1."""


def _parser():
    parser = argparse.ArgumentParser(
        prog="escort-tf", epilog=_EPILOG,
        description="Run TFMOT-pruned tf_keras conv nets on escort_tf's sparse convolution.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    convert = commands.add_parser(
        "convert", epilog=_EPILOG, help="convert a saved pruned model to a sparse SavedModel",
        description="Convert a saved (pruned) tf_keras model; write DST as a SavedModel.")
    convert.add_argument("src", metavar="SRC",
                         help="saved tf_keras model: SavedModel directory, .h5 or .keras")
    convert.add_argument("dst", metavar="DST", help="SavedModel directory to write")
    convert.add_argument("--min-sparsity", type=float, default=0.5, metavar="X",
                         help="convert a Conv2D whose kernel has at least this fraction of "
                              "zeros (default: %(default)s)")
    convert.add_argument("--autotune", action="store_true",
                         help="time each candidate layer's variants (dense, sparse, 2:4 on a "
                              "GPU) here and keep the fastest, then time the whole model built "
                              "three ways (those winners, the rule's pick, all dense) and keep "
                              "the fastest")
    convert.add_argument("--no-whole-model-check", action="store_true",
                         help="with --autotune, keep the per-layer winners without timing the "
                              "whole model (faster autotune: two model builds fewer)")
    convert.add_argument("--autotune-batch-size", type=int, default=1, metavar="N",
                         help="batch size autotune times each layer at: the one you will "
                              "serve with (default: %(default)s)")
    convert.add_argument("--fold-batch-norm", action="store_true",
                         help="fold each BatchNormalization (and a ReLU after it) that alone "
                              "follows a convolution into it: faster inference, fewer layers")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    # Listed for --help only: main() hands everything after "bench" to the benchmark.
    commands.add_parser("bench", add_help=False,
                        help="benchmark the op against tf.nn.conv2d (see `bench --help`)")
    return parser


def _load(src):
    if not os.path.exists(src):
        raise CliError(f"SRC {src!r} does not exist.")
    try:
        with tfmot.sparsity.keras.prune_scope():
            return tf_keras.models.load_model(src, compile=False)
    except (OSError, ValueError, ImportError) as e:
        raise CliError(f"can't load a tf_keras model from {src!r}: {e}") from e


def _refuse_existing(dst, overwrite):
    if os.path.lexists(dst) and not overwrite:
        raise CliError(f"DST {dst!r} already exists; pass --overwrite to replace it.")


def _check_paths(src, dst, overwrite):
    src_real, dst_real = os.path.realpath(src), os.path.realpath(dst)
    if dst_real == src_real or dst_real.startswith(src_real + os.sep) or \
            src_real.startswith(dst_real + os.sep):
        raise CliError(f"DST {dst!r} overlaps SRC {src!r}; SRC is never modified.")
    _refuse_existing(dst, overwrite)
    if os.path.lexists(dst) and not os.path.isdir(dst):
        raise CliError(f"DST {dst!r} exists and is not a directory; a SavedModel is a directory.")
    if dst.endswith((".h5", ".keras")):
        raise CliError(f"DST {dst!r} looks like a file name; DST is a SavedModel directory.")
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        raise CliError(f"DST's parent directory {parent!r} does not exist.")


def save_atomically(model, dst, overwrite=False):
    """Saves `model` as a SavedModel at `dst` via a temporary directory and renames.

    Args:
        model: the tf_keras model.
        dst: destination directory path.
        overwrite: replace an existing `dst`; otherwise it is an error.

    Raises:
        CliError: `dst` exists and `overwrite` is False.

    On any failure `dst` is left as it was and the temporary directory removed.
    """
    dst = os.path.abspath(dst)
    _refuse_existing(dst, overwrite)
    parent, name = os.path.split(dst)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    old = None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become DST's mode
        model.save(tmp, save_format="tf", include_optimizer=False)
        if os.path.lexists(dst):
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rename(dst, os.path.join(old, name))
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:  # put the previous DST back; if that fails too, `old` keeps it
            os.rename(os.path.join(old, name), dst)
            os.rmdir(old)
        raise
    if old is not None:
        shutil.rmtree(old)


def _convert(args):
    if not 0.0 <= args.min_sparsity <= 1.0:
        raise CliError(f"--min-sparsity must be in [0, 1], got {args.min_sparsity}.")
    if args.autotune_batch_size < 1:
        raise CliError(f"--autotune-batch-size must be positive, got {args.autotune_batch_size}.")
    if args.no_whole_model_check and not args.autotune:
        raise CliError("--no-whole-model-check needs --autotune: only autotune checks the "
                       "whole model.")
    _check_paths(args.src, args.dst, args.overwrite)
    model = _load(args.src)
    converted, report = escort_tf.convert(model, min_sparsity=args.min_sparsity,
                                          autotune=args.autotune,
                                          autotune_batch_size=args.autotune_batch_size,
                                          autotune_whole_model=not args.no_whole_model_check,
                                          fold_batch_norm=args.fold_batch_norm,
                                          return_report=True)
    print(report)
    if not args.fold_batch_norm:
        foldable = sum(map(len, foldable_layers(converted).values()))
        if foldable:
            print(f"\n{foldable} batch norm and ReLU layers could be folded into the "
                  "convolutions before them: --fold-batch-norm makes inference faster")
    save_atomically(converted, args.dst, overwrite=args.overwrite)
    sparse = sum(row.decision == "sparse" for row in report)
    print(f"\nwrote {args.dst}: {sparse} of {len(report)} layers with a kernel now sparse")
    return 0


def main(argv=None):
    """Runs the command line; returns the exit status.

    Args:
        argv: arguments without the program name; defaults to `sys.argv[1:]`.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return benchmark.main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return _convert(args)
    except CliError as e:
        print(f"escort-tf: error: {e}", file=sys.stderr)
        return 1
