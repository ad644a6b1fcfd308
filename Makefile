# The README's two commands: `make run` (the default experiment) and `make test` (lint, types,
# tests, the documentation build). Both create or reuse .venv/ in the repo root and install the
# project into it; `make docs` builds the documentation site into site/.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: run test lint docs bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch and torchvision first, pinned to the versions the project is tested with (CPU builds are fine).
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The main job: the search on the embedded default experiment, into runs/default.
run: $(STAMP)
	$(VENV)/bin/prune-search run experiments/default.yaml $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Two test processes, a test file each at a time (its module's Ray cluster and searches stay in one
# process): the Ray tests wait on process starts and heartbeats, which the other process fills.
test: lint docs
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=20

bench: $(STAMP)
	for script in bench/bench_*.py; do $(PY) $$script || exit 1; done

clean-venv:
	rm -rf $(VENV)
