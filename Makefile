# fastguide: every set-up step, so that a fresh clone needs one command.
#   make test        CPU venv (.venv, torch 2.13.0 CPU), build, full test suite
#   make cuda-check  CUDA venv (.venv-cuda, torch 2.14.1 + CUDA 13.0), build the CUDA kernels
#                    for sm_80 and sm_90 (+ sm_90 PTX, which newer GPUs compile at load), import
#                    them, and check every kernel's registers, spills, shared memory and claimed
#                    SASS features against csrc/*/cuda_budget.json (tools/cuda_check.py; no GPU)
#   make bench       the AdaGN benchmark on this machine
#   make demo        CPU venv + build as for test, then `fastguide demo` (guided digits, < 2 min)
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CUDA_VENV ?= .venv-cuda
CUDA_TORCH ?= torch==2.14.1
CUDA_ARCHS ?= 80-real;90-real;90-virtual
# The editable install maps packages when it is made: a new package (__init__.py) needs a reinstall.
SOURCES := pyproject.toml CMakeLists.txt $(shell find csrc cmake -type f 2>/dev/null) \
	$(shell find python -name __init__.py 2>/dev/null)

.PHONY: test demo cuda-check bench clean

test: $(VENV)/.built
	$(VENV)/bin/python -m pytest -q -rs

$(VENV)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH)
	$(VENV)/bin/python -m pip install -q -r requirements-dev.txt
	touch $@

# One build directory per environment: a CPU and a CUDA venv must never share one.
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(VENV)/bin/python -m pip install -q --no-build-isolation -e . -Cbuild-dir=build/$(notdir $(VENV))
	touch $@

$(CUDA_VENV)/.deps:
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip install -q --upgrade pip
	$(CUDA_VENV)/bin/python -m pip install -q $(CUDA_TORCH) scikit-build-core ninja numpy tqdm
	touch $@

# Always an (incremental) install: the checks must see the kernels as they are now.
cuda-check: $(CUDA_VENV)/.deps
	FASTGUIDE_CUDA=ON CUDAARCHS="$(CUDA_ARCHS)" $(CUDA_VENV)/bin/python -m pip install -q \
		--no-build-isolation . -Cbuild-dir=build/$(notdir $(CUDA_VENV))
	cd /tmp && $(abspath $(CUDA_VENV))/bin/python -c "import fastguide; i = fastguide.build_info(); \
		print(i); assert i['cuda'] and i['cuda_archs'] == '$(CUDA_ARCHS)'.split(';'), i"
	cd /tmp && $(abspath $(CUDA_VENV))/bin/python $(abspath tools/cuda_check.py)

demo: $(VENV)/.built
	$(VENV)/bin/python -m fastguide demo --overwrite

bench: $(VENV)/.built
	$(VENV)/bin/python benchmarks/bench_adagn.py

clean:
	rm -rf build $(VENV) $(CUDA_VENV)
