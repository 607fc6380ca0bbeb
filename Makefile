# make demo / make test / make bench: each works from a fresh clone on a fresh
# machine. Without PYTHON=..., a virtual environment .venv is created and
# torch, triton and the test tools are installed into it; the extension
# mixkernels._C is then built in place (CPU kernels always; CUDA kernels for
# TORCH_CUDA_ARCH_LIST when torch has CUDA and a CUDA toolkit is found).

TORCH_VERSION ?= 2.14.1
TRITON_VERSION ?= 3.8.*
TORCH_CUDA_ARCH_LIST ?= 9.0
MAX_JOBS ?= 2
TEST_DEPS = "triton==$(TRITON_VERSION)" ninja pytest pytest-benchmark hypothesis numpy scikit-learn timm setuptools wheel

ifeq ($(PYTHON),)
PY := .venv/bin/python
PY_DEP := .venv/.deps-installed
else
PY := $(PYTHON)
PY_DEP := .deps-installed-external
endif

# The CUDA toolkit: nvcc on PATH may be a wrapper script outside the toolkit,
# so look for a directory that really holds one.
CUDA_HOME ?= $(shell for d in /usr/local/cuda /usr/local/cuda-*; do \
	[ -x $$d/bin/nvcc ] && [ -f $$d/include/cuda_runtime.h ] && echo $$d && break; done)

.PHONY: all build test demo bench clean

all: build

.venv/.deps-installed:
	python3 -m venv .venv
	.venv/bin/python -m pip install --upgrade pip
	.venv/bin/python -m pip install "torch==$(TORCH_VERSION)"
	.venv/bin/python -m pip install $(TEST_DEPS)
	touch $@

.deps-installed-external:
	$(PY) -m pip install $(TEST_DEPS)
	touch $@

# CPATH: the pip CUDA packages installed with torch carry headers (cusparse.h,
# ...) that torch's CUDA headers include and a minimal toolkit may lack.
build: $(PY_DEP)
	CUDA_HOME="$(CUDA_HOME)" FORCE_CUDA=$(if $(CUDA_HOME),1,0) TORCH_CUDA_ARCH_LIST="$(TORCH_CUDA_ARCH_LIST)" \
	MAX_JOBS=$(MAX_JOBS) CPATH="$$($(PY) -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13", "include"))' 2>/dev/null):$$CPATH" \
	$(PY) setup.py build_ext --inplace
	$(PY) -c "import mixkernels; [print(f'  {k:7s} {v.usable!s:5s} {v.reason}') for k, v in mixkernels.backends().items()]"

test: build
	$(PY) -m pytest -q tests

demo: build
	$(PY) examples/digits_mixup.py
	$(PY) examples/icm_digits.py

bench: build
	$(PY) -m benchmarks.run --op all

clean:
	rm -rf build mixkernels/_C*.so .deps-installed-external
