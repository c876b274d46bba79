"""The Bazel build and setup.py compile the same files, and Bazel stays offline.

cc/sources.bzl is the one source list: setup.py exec()s it, cc/BUILD loads it.
These checks fail when a file under cc/ is in neither, when the list names a
file that is gone, or when cc/BUILD stops using one of its lists. They read
files only, so they run without Bazel.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE_SUFFIXES = (".cc", ".cu", ".cuh", ".h")
# Tests, benchmarks and fuzz targets sit beside their kernel but are not part of the op.
NOT_OP_STEMS = ("_test", "_bench", "_fuzz")
BAZEL_FILES = ["WORKSPACE", "BUILD", "cc/BUILD", "build_deps/BUILD",
               "build_deps/tf_configure.bzl", "build_deps/cuda.bzl",
               "build_deps/offline_rules.bzl", "tests/BUILD"]


def _source_lists():
    namespace = {}
    exec((ROOT / "cc" / "sources.bzl").read_text(), namespace)  # as setup.py does
    return {name: value for name, value in namespace.items()
            if name.isupper() and isinstance(value, list)}


def _listed_paths():
    return {path for paths in _source_lists().values() for path in paths}


def test_every_source_under_cc_is_listed():
    listed = _listed_paths()
    unlisted = sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / "cc").rglob("*")
        if path.suffix in SOURCE_SUFFIXES
        and not path.stem.endswith(NOT_OP_STEMS)
        and str(path.relative_to(ROOT)) not in listed)
    assert not unlisted, (
        f"{unlisted} are under cc/ but not in cc/sources.bzl: add them to the "
        "list they belong to, or name them *_test / *_bench / *_fuzz")


def test_every_listed_source_exists():
    missing = sorted(path for path in _listed_paths() if not (ROOT / path).is_file())
    assert not missing, f"cc/sources.bzl lists {missing}, which do not exist"


def test_listed_paths_are_under_cc():
    # cc/BUILD strips "cc/" to make package-relative labels.
    outside = sorted(path for path in _listed_paths() if not path.startswith("cc/"))
    assert not outside, f"cc/sources.bzl lists {outside} outside cc/"


def test_cc_build_loads_every_list():
    build = (ROOT / "cc" / "BUILD").read_text()
    load = re.search(r'load\(\s*"//cc:sources\.bzl"(.*?)\)', build, re.DOTALL)
    assert load, 'cc/BUILD does not load("//cc:sources.bzl", ...)'
    loaded = set(re.findall(r'"(\w+)"', load.group(1)))
    unused = sorted(set(_source_lists()) - loaded)
    assert not unused, f"cc/BUILD does not load {unused} from cc/sources.bzl"
    for name in loaded:
        assert re.search(rf"\b{name}\b", build[load.end():]), (
            f"cc/BUILD loads {name} but never uses it")


def _string_constant(path, name):
    match = re.search(rf'^{name}\s*=\s*"([^"]*)"', (ROOT / path).read_text(), re.M)
    assert match, f"{path} defines no {name} string"
    return match.group(1)


def test_cuda_archs_match_setup_py():
    assert (_string_constant("build_deps/cuda.bzl", "DEFAULT_CUDA_ARCHS")
            == _string_constant("setup.py", "DEFAULT_CUDA_ARCHS"))


@pytest.mark.parametrize("path", ["setup.py", "build_deps/cuda.bzl",
                                  "cc/kernels/build_sparse24_gpu.sh"])
def test_every_build_honours_the_wgmma_switch(path):
    # The three builds of the Hopper 2:4 kernel take the same opt-out variable and the same
    # define, so that ESCORT_TF_SPARSE24_WGMMA=0 means one thing everywhere.
    text = (ROOT / path).read_text()
    assert "ESCORT_TF_SPARSE24_WGMMA" in text
    assert "-DESCORT_SPARSE24_WGMMA=1" in text
    assert "compute_90a,code=sm_90a" in text


@pytest.mark.parametrize("path", BAZEL_FILES)
def test_bazel_files_fetch_nothing(path):
    text = (ROOT / path).read_text()
    fetches = re.findall(r"\b(?:http_archive|http_file|http_jar|(?:new_)?git_repository)\s*\("
                         r"|\.download(?:_and_extract)?\s*\(|\burls?\s*=", text)
    assert not fetches, f"{path} fetches from the network: {fetches}"
