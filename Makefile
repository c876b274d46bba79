# The two entry points of the README: `make demo` and `make test`. Each
# creates what it needs (virtual environment, op library) on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SAN_DIR := build/sanitize
# The layer-1 sources, from the list setup.py and Bazel read too.
KERNEL_SRCS = $(shell $(PYTHON) -c 'exec(open("cc/sources.bzl").read()); print(*KERNEL_SRCS)')
GPU_PLAN_SRCS = $(shell $(PYTHON) -c 'exec(open("cc/sources.bzl").read()); print(*GPU_PLAN_SRCS)')
CXX ?= g++

.PHONY: venv build demo test test-cc test-py bench-cpu clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

# Editable install: builds escort_tf/_escort_ops.so in place (CUDA flavour when nvcc exists).
build: venv
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

demo: build
	TF_USE_LEGACY_KERAS=1 $(PY) examples/demo.py

# Layer-1 C++ tests (the CPU kernel, and the host-side parts of the GPU
# kernels: the CSR planner and the 2:4 layout), plain and under
# AddressSanitizer + UndefinedBehaviorSanitizer (the 2:4 layout's only
# under them: it is quick).
test-cc:
	mkdir -p $(SAN_DIR)
	$(CXX) -std=c++17 -O2 -Wall -Wextra -I. -o $(SAN_DIR)/csr_conv_cpu_test cc/kernels/csr_conv_cpu_test.cc $(KERNEL_SRCS) -lpthread
	$(SAN_DIR)/csr_conv_cpu_test
	$(CXX) -std=c++17 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -I. -o $(SAN_DIR)/csr_conv_cpu_test_asan cc/kernels/csr_conv_cpu_test.cc $(KERNEL_SRCS) -lpthread
	$(SAN_DIR)/csr_conv_cpu_test_asan
	$(CXX) -std=c++17 -O2 -Wall -Wextra -I. -o $(SAN_DIR)/csr_conv_gpu_plan_test cc/kernels/csr_conv_gpu_plan_test.cc $(GPU_PLAN_SRCS) $(KERNEL_SRCS) -lpthread
	$(SAN_DIR)/csr_conv_gpu_plan_test
	$(CXX) -std=c++17 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -I. -o $(SAN_DIR)/csr_conv_gpu_plan_test_asan cc/kernels/csr_conv_gpu_plan_test.cc $(GPU_PLAN_SRCS) $(KERNEL_SRCS) -lpthread
	$(SAN_DIR)/csr_conv_gpu_plan_test_asan
	$(CXX) -std=c++17 -O1 -g -Wall -Wextra -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -I. -o $(SAN_DIR)/sparse24_conv_test_asan cc/kernels/sparse24_conv_test.cc $(GPU_PLAN_SRCS) $(KERNEL_SRCS) -lpthread
	$(SAN_DIR)/sparse24_conv_test_asan

test-py: build
	$(PY) -m pytest -q -n 2 tests

test: test-cc test-py

bench-cpu: build
	TF_USE_LEGACY_KERAS=1 $(PY) benchmarks/cpu/bench_layers.py

clean:
