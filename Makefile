# The two set-up commands (README): `make demo` and `make test`.
# Each creates its own virtualenv from the machine's python3; nothing else is assumed.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP_FLAGS = --disable-pip-version-check -q

.PHONY: demo test venv lint unit compat stdlib-suite other-pythons bench docs clean

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e '.[dev]'
	touch $@

venv: $(VENV)/.stamp

demo: venv
	$(PY) examples/demo.py

# The whole suite: lint and types, the unit suite on this Python, the other installed
# Pythons (a named compat subset), and CPython's own process-pool tests with tracedpool
# substituted.
test: venv lint unit other-pythons stdlib-suite

lint: venv
	$(VENV)/bin/ruff check tracedpool tests benchmarks examples
	$(VENV)/bin/ruff format --check tracedpool tests benchmarks examples
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest -q

other-pythons: venv
	$(PY) tools/other_pythons.py

stdlib-suite: venv
	$(PY) tools/stdlib_suite.py --jobs 1

bench: venv
	$(PY) benchmarks/throughput.py

docs: venv
	$(PY) -c 'import sys, tracedpool._names as n; sys.exit(n.main(["--write", "docs/names.md"]))'

clean:
	rm -rf $(VENV) .venv-* build *.egg-info .pytest_cache .mypy_cache .ruff_cache
