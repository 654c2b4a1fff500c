# The two commands of the README: `make demo` (the main job on the bundled synthetic benchmark) and
# `make test` (the whole suite). Both create the virtualenv from requirements.txt on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup test demo bench

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(PY) -m tea_apps.demo --workdir runs/demo

# Two pytest workers (pytest-xdist), each taking whole test files: the suite's trainings and
# subprocesses overlap instead of queueing; TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -rs $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) tests

bench: $(STAMP)
	PY=$(PY) bash bench/run_all.sh
