# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAIO_DIR := $(CURDIR)/.cache/saio
NPM_DIR := $(CURDIR)/.cache/npm

.PHONY: demo test bench notebooks architecture venv npm clean-cache

$(BIN)/dask-whisk: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/dask-whisk

$(NPM_DIR)/node_modules/openwhisk/package.json:
	mkdir -p $(NPM_DIR)
	cd $(NPM_DIR) && npm install --silent --no-audit --no-fund openwhisk@3 >/dev/null
	touch $@

npm: $(NPM_DIR)/node_modules/openwhisk/package.json

demo: venv
	$(BIN)/python notebooks/demo.py

# The test run starts a real Swift on loopback and stops it afterwards, whatever the outcome.
test: venv npm
	@eval "$$($(BIN)/dask-whisk swift-saio start --dir $(SAIO_DIR))" && \
	  DASK_WHISK_NPM_DIR=$(NPM_DIR) DASK_WHISK_TEST_SAIO_DIR=$(SAIO_DIR) $(BIN)/python -m pytest $(PYTEST_ARGS); \
	  rc=$$?; $(BIN)/dask-whisk swift-saio stop --dir $(SAIO_DIR); exit $$rc

# Benchmarks (never two at once on a 2-core machine): whisk_get against Dask's schedulers and
# distributed.LocalCluster, fused and unfused, with a 50 ms-latency server; see benchmarks/.
# Run the story notebooks again and store their outputs (make test checks they still run).
notebooks: venv
	$(BIN)/python notebooks/execute.py

# The README's architecture picture, drawn from the modules' imports (tests/test_docs.py fails when
# the code's imports no longer match it).
architecture: venv
	$(BIN)/python docs/architecture.py

bench: venv
	$(BIN)/pip install -q distributed
	$(BIN)/python benchmarks/schedulers.py --repeat 3 --json .cache/bench.json

clean-cache:
	rm -rf .cache
