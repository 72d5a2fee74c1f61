# DICOM Edge: `make run` starts the whole suite, `make test` runs every test.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export TCP_NODELAY := 1

# The OHIF viewer at /viewer (issue 5): the prebuilt dist/ of the npm package @ohif/app, fetched
# (never committed) into .run/ohif/dist; EDGE_VIEWER_DIR points the listener at it. Its browser
# test drives Debian's chromium with the npm package playwright-core from .run/node/.
OHIF_VERSION       := 3.13.2
PLAYWRIGHT_VERSION := 1.65.1
OHIF_STAMP         := .run/ohif/.app-$(OHIF_VERSION)
PLAYWRIGHT_STAMP   := .run/node/.playwright-core-$(PLAYWRIGHT_VERSION)
export EDGE_VIEWER_DIR ?= $(CURDIR)/.run/ohif/dist

.PHONY: run test unit integration e2e lint deploy-check bench bench-find docs clean viewer browser

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The viewer's fetch may fail (no registry): the suite still starts, /viewer says how to fetch it,
# and the viewer's test fails saying what is missing.
FETCH_VIEWER = $(MAKE) --no-print-directory viewer || echo "warning: OHIF viewer not fetched" >&2
FETCH_BROWSER = $(MAKE) --no-print-directory browser || echo "warning: playwright-core not fetched" >&2

run: $(STAMP)
	@$(FETCH_VIEWER)
	$(VENV)/bin/edge up --dev

test: $(STAMP) lint
	@$(FETCH_VIEWER); $(FETCH_BROWSER)
	$(VENV)/bin/pytest -q

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

integration: $(STAMP)
	$(VENV)/bin/pytest -q tests/integration

e2e: $(STAMP)
	@$(FETCH_VIEWER); $(FETCH_BROWSER)
	$(VENV)/bin/pytest -q tests/e2e

viewer: $(OHIF_STAMP)

# npm pack takes the package's own tarball only (its dist/ is self-contained; installing it would
# pull its build dependencies too). Unpacked aside and moved in whole: a cut download leaves none.
$(OHIF_STAMP):
	rm -rf .run/ohif && mkdir -p .run/ohif/fetch
	cd .run/ohif/fetch && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null \
	  && tar xzf ohif-app-$(OHIF_VERSION).tgz
	test -f .run/ohif/fetch/package/dist/index.html
	mv .run/ohif/fetch/package/dist .run/ohif/dist && rm -rf .run/ohif/fetch
	touch $@

browser: $(PLAYWRIGHT_STAMP)

# playwright-core only: it downloads no browser (the test launches /usr/bin/chromium).
$(PLAYWRIGHT_STAMP):
	rm -rf .run/node && mkdir -p .run/node
	npm install --silent --no-audit --no-fund --prefix .run/node \
	  playwright-core@$(PLAYWRIGHT_VERSION)
	touch $@

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
