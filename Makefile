# Two commands matter: `make run` and `make test`. Everything else is a helper for those.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# Re-install when pyproject.toml changes.
STAMP      := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint bench bench-storm bench-throughput clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "lockd needs Python 3.11 or newer (found $$($(PYTHON) --version))" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -e '.[speed]'
	@touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(PIP) install -e '.[speed,test]'
	@touch $@

run: $(STAMP)
	$(VENV)/bin/lockd serve $(ARGS)

test: $(TEST_STAMP)
	@bash tests/ensure_servers.sh
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .venv-bench .pytest_cache .hypothesis
