# Two commands matter: `make run` and `make test`. Everything else is a helper for those.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# Re-install when pyproject.toml changes.
STAMP      := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# The benchmark's own venv: locust (and gevent) never share a process with lockd or pytest.
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_STORM_ARGS ?= --nodes 1000 --groups 20 --slots 2 --period 300 --reboot 60 --time-scale 1/300
BENCH_THROUGHPUT_ARGS ?= --runs 1 --duration 3

.PHONY: run test lint bench bench-storm bench-throughput bench-venv clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "lockd needs Python 3.11 or newer (found $$($(PYTHON) --version))" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -e '.[all]'
	@touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(PIP) install -e '.[all,test]'
	@touch $@

$(BENCH_STAMP): bench/requirements.txt | $(PY)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip --disable-pip-version-check -q install -r bench/requirements.txt
	@touch $@

bench-venv: $(BENCH_STAMP)

run: $(STAMP)
	$(VENV)/bin/lockd serve $(ARGS)

test: $(TEST_STAMP) $(BENCH_STAMP)
	@bash tests/ensure_servers.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .

# `make bench`: a small storm and the throughput table, in under 3 minutes (bench/README.md).
bench: bench-storm bench-throughput

bench-storm: $(STAMP) $(BENCH_STAMP)
	rm -rf $(CURDIR)/bench/out/storm-state
	$(BENCH_VENV)/bin/python -m bench.storm.run --out bench/out/storm \
	  --lockd "$(VENV)/bin/lockd serve --state-dir $(CURDIR)/bench/out/storm-state" \
	  --server-cpus 0 --locust-cpus 1 $(BENCH_STORM_ARGS)

bench-throughput: $(TEST_STAMP)
	@bash tests/ensure_servers.sh
	$(PY) -m bench.throughput $(BENCH_THROUGHPUT_ARGS)

clean:
	rm -rf $(VENV) .venv-bench .pytest_cache .hypothesis
