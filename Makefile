# Two entry points do all set-up themselves: `make run` (the whole pipeline on the embedded
# defaults) and `make test` (the whole test suite). Both create .venv and install the pinned
# dependencies once; later calls reinstall nothing unless pyproject.toml or the lock changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nfpipe-installed
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: run test test-fast docs lint bench gpu-check lock clean

run: $(STAMP)
	$(BIN)/nfpipe run $(ARGS)

# Two pytest-xdist workers: most tests wait on processes (Ray, servers), not on the CPU.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=25 $(ARGS)

# Unit tests only: no Ray cluster, no server process, no whole pipeline (under a minute).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow" $(ARGS)

docs: $(STAMP)
	$(BIN)/nfpipe config reference --update README.md

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

# The Glow CIFAR recipe's rows on one GPU within 8 minutes (--time-limit 450 s by default;
# benchmarks/gpu_check.py; README, "GPUs"); ARGS="--device cpu --smoke" runs it on a CPU in
# seconds.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.lock
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

lock: $(STAMP)
	{ echo "# Pinned environment (pip freeze of a working install). Regenerate: make lock"; \
	  $(PIP) freeze --all --exclude-editable | grep -v "^pip=="; } > requirements.lock

clean:
	rm -rf .nfpipe mlflow.db mlartifacts data/shards
