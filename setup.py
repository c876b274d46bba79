"""Builds escort_tf/_escort_ops.so, the TensorFlow op library, with TF's flags.

The sources come from cc/sources.bzl, the list Bazel reads too. The CUDA
flavour is built when `nvcc` is found (or ESCORT_TF_CUDA=1 demands it);
ESCORT_TF_CUDA=0 forces the CPU-only op. Object files are cached under
build/escort_obj by a hash of their inputs, so rebuilds after an edit only
recompile what changed.
"""

import concurrent.futures
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent
# Real machine code for every architecture CUDA 13 supports up to Hopper,
# plus PTX of the newest so later GPUs can JIT it.
DEFAULT_CUDA_ARCHS = "75;80;86;89;90"


def _read_sources():
    namespace = {}
    exec((ROOT / "cc" / "sources.bzl").read_text(), namespace)  # Starlark lists are Python.
    return namespace


SOURCES = _read_sources()


def _version():
    namespace = {}
    exec((ROOT / "escort_tf" / "_version.py").read_text(), namespace)
    return namespace["__version__"]


def _tf_flags():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    major, minor = tf.__version__.split(".")[:2]
    return {
        "compile": tf.sysconfig.get_compile_flags(),
        "link": tf.sysconfig.get_link_flags(),
        "include": tf.sysconfig.get_include(),
        "version": tf.__version__,
        "minor": f"{major}.{minor}",
    }


def _find_nvcc():
    setting = os.environ.get("ESCORT_TF_CUDA", "auto")
    if setting == "0":
        return None
    nvcc = shutil.which("nvcc")
    if nvcc is None and os.environ.get("CUDA_HOME"):
        candidate = pathlib.Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"
        nvcc = str(candidate) if candidate.exists() else None
    if nvcc is None and setting == "1":
        sys.exit("ESCORT_TF_CUDA=1 but nvcc was not found on PATH or in CUDA_HOME")
    return nvcc


def _cuda_lib_dir(nvcc):
    """Where libcudart_static.a lives; `nvcc` may be a wrapper script elsewhere."""
    if os.environ.get("CUDA_HOME"):
        return pathlib.Path(os.environ["CUDA_HOME"]) / "lib64"
    # nvcc's dry run prints the toolkit root it really uses as "#$ TOP=...".
    with tempfile.TemporaryDirectory() as tmp:
        empty = pathlib.Path(tmp) / "empty.cu"
        empty.write_text("")
        dry_run = subprocess.run([nvcc, "-dryrun", "-c", str(empty), "-o", str(empty) + ".o"],
                                 capture_output=True, text=True, check=False)
    for line in (dry_run.stdout + dry_run.stderr).splitlines():
        if line.startswith("#$ TOP="):
            top = pathlib.Path(line.split("=", 1)[1].strip()).resolve()
            return top / "lib64"
    sys.exit(f"could not find the CUDA toolkit of {nvcc}; set CUDA_HOME")


def _all_headers():
    return sorted([*(ROOT / "cc").rglob("*.h"), *(ROOT / "cc").rglob("*.cuh")])


class BuildEscortOps(build_ext):
    """Compiles the op library with g++ (and nvcc) instead of distutils' rules."""

    def get_ext_filename(self, fullname):
        return os.path.join(*fullname.split(".")) + ".so"

    def build_extension(self, ext):
        tf_flags = _tf_flags()
        nvcc = _find_nvcc()
        cxx = os.environ.get("CXX", "g++")
        common = ["-std=c++17", "-O3", "-fPIC", f"-I{ROOT}",
                  "-Wno-deprecated-declarations"] + tf_flags["compile"]
        jobs = []  # (command builder, source, extra flags)
        for source in SOURCES["KERNEL_SRCS"] + SOURCES["TF_SRCS"]:
            jobs.append(([cxx] + common, source))
        link_extra = []
        if nvcc:
            cuda_include = os.path.join(tf_flags["include"], "third_party", "gpus",
                                        "cuda", "include")
            gpu_glue = common + ["-DGOOGLE_CUDA=1", "-DEIGEN_USE_GPU",
                                 f"-I{cuda_include}"]
            for source in SOURCES["GPU_PLAN_SRCS"]:
                jobs.append(([cxx] + common, source))
            for source in SOURCES["TF_GPU_SRCS"]:
                jobs.append(([cxx] + gpu_glue, source))
            archs = os.environ.get("ESCORT_TF_CUDA_ARCHS", DEFAULT_CUDA_ARCHS).split(";")
            gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
            gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
            nvcc_base = [nvcc, "-std=c++17", "-O3", "-Xcompiler", "-fPIC", f"-I{ROOT}"]
            nvcc_flags = nvcc_base + gencode
            for source in SOURCES["GPU_KERNEL_SRCS"]:
                jobs.append((nvcc_flags, source))
            # wgmma exists only in sm_90a code, which runs on compute capability 9.0 alone.
            # ESCORT_TF_SPARSE24_WGMMA=0 leaves it out (the mma.sp kernel then runs on Hopper too).
            sm90a_flags = nvcc_flags
            if "90" in archs and os.environ.get("ESCORT_TF_SPARSE24_WGMMA", "1") == "1":
                sm90a_flags = nvcc_base + ["-gencode=arch=compute_90a,code=sm_90a",
                                           "-DESCORT_SPARSE24_WGMMA=1"]
            for source in SOURCES["GPU_SM90A_KERNEL_SRCS"]:
                jobs.append((sm90a_flags, source))
            cuda_lib = _cuda_lib_dir(nvcc)
            # Static cudart: the library loads on machines without a CUDA runtime.
            link_extra = [f"-L{cuda_lib}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]

        obj_dir = ROOT / "build" / "escort_obj"
        obj_dir.mkdir(parents=True, exist_ok=True)
        headers_digest = hashlib.sha256(
            b"".join(h.read_bytes() for h in _all_headers())).hexdigest()

        def compile_one(job):
            command, source = job
            digest = hashlib.sha256(
                (ROOT / source).read_bytes() + " ".join(command).encode()
                + headers_digest.encode()).hexdigest()[:16]
            obj = obj_dir / f"{pathlib.Path(source).name}.{digest}.o"
            if not obj.exists():
                print(f"compiling {source}", flush=True)
                tmp = obj.with_suffix(".tmp.o")
                subprocess.run(command + ["-c", str(ROOT / source), "-o", str(tmp)],
                               check=True)
                tmp.rename(obj)
            return str(obj)

        workers = int(os.environ.get("ESCORT_TF_BUILD_JOBS", os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            objects = list(pool.map(compile_one, jobs))

        target = pathlib.Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([cxx, "-shared", "-o", str(target)] + objects
                       + tf_flags["link"] + link_extra, check=True)
        print(f"built {target} (TensorFlow {tf_flags['version']}, "
              f"{'CPU + CUDA' if nvcc else 'CPU only'})", flush=True)


def _tf_minor():
    # The op library is ABI-bound to the TF minor it was built against.
    try:
        return _tf_flags()["minor"]
    except ImportError:  # metadata-only runs (e.g. sdist) without TF
        return "2.21"


setup(
    name="escort-tf",
    version=_version(),
    description="Direct sparse convolution for pruned tf_keras models (Escort)",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["escort_tf"],
    ext_modules=[Extension(
        "escort_tf._escort_ops",
        sources=SOURCES["KERNEL_SRCS"] + SOURCES["TF_SRCS"]
        + SOURCES["GPU_PLAN_SRCS"] + SOURCES["GPU_KERNEL_SRCS"]
        + SOURCES["TF_GPU_SRCS"])],
    cmdclass={"build_ext": BuildEscortOps},
    install_requires=[
        f"tensorflow=={_tf_minor()}.*",
        f"tf-keras=={_tf_minor()}.*",
        "tensorflow-model-optimization==0.8.1",
        "numpy",
    ],
    extras_require={"bench": ["matplotlib"], "progress": ["tqdm"]},
    entry_points={"console_scripts": ["escort-tf = escort_tf.cli:main"]},
    zip_safe=False,
)
