# DICOM Edge: `make run` starts the whole suite, `make test` runs every test.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export TCP_NODELAY := 1

.PHONY: run test unit integration e2e lint deploy-check bench bench-find docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/edge up --dev

test: $(STAMP) lint
	$(VENV)/bin/pytest -q

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

integration: $(STAMP)
	$(VENV)/bin/pytest -q tests/integration

e2e: $(STAMP)
	$(VENV)/bin/pytest -q tests/e2e

lint: $(STAMP)
	$(VENV)/bin/ruff check libs services tests bench
	$(VENV)/bin/mypy libs services

deploy-check: $(STAMP)
	PATH=$(VENV)/bin:$$PATH deploy/validate.sh

bench: $(STAMP)
	$(PY) bench/ingest.py

# The query benchmark (issue 4): loads its 100,000-study catalog once into edge_bench_find
# (bench/catalog_load.py, ~25 min on 2 cores), then measures the query mix (docs/benchmarks.md).
bench-find: $(STAMP)
	$(PY) bench/find.py --reuse

# docs/events.md and docs/asyncapi.yaml from the event models (a unit test fails when stale).
docs: $(STAMP)
	$(PY) -m edge.common.eventdocs

clean:
	rm -rf $(VENV) .run .pytest_cache
