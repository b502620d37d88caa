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

# The whole suite: lint and types, the unit suite on this Python, the same suite on the
# other supported Pythons (3.11 to 3.15; 3.14 and 3.15 in a cached Debian unstable root,
# tools/sid_root.py), and CPython's own process-pool tests on the plain stdlib, with
# tracedpool substituted, and with tracedpool and an always-on SDK.
# Every suite runs and reports even when an earlier one failed; a table of results and
# times closes the run, and the exit status is non-zero if any suite failed.
SUITES = lint unit other-pythons stdlib-suite

test: venv
	@failed=; table=; \
	for suite in $(SUITES); do \
	    start=$$(date +%s); \
	    if $(MAKE) --no-print-directory $$suite; then result=passed; \
	    else result=FAILED; failed="$$failed $$suite"; fi; \
	    table="$$table$$(printf '  %-14s %-6s %5d s' $$suite $$result $$(($$(date +%s) - start)))\n"; \
	done; \
	printf '\nmake test: every suite ran\n%b' "$$table"; \
	if [ -n "$$failed" ]; then echo "make test: FAILED:$$failed"; exit 1; fi; \
	echo "make test: all suites passed"

lint: venv
	$(VENV)/bin/ruff check tracedpool tests benchmarks examples tools
	$(VENV)/bin/ruff format --check tracedpool tests benchmarks examples tools
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest -q

other-pythons: venv
	$(PY) tools/other_pythons.py

# Three runs at once (the tool's default): the tests mostly sleep, and on two cores the
# plain-stdlib runs stayed clean at that load; one at a time took about 40 minutes.
stdlib-suite: venv
	$(PY) tools/stdlib_suite.py

bench: venv
	$(PY) benchmarks/throughput.py

docs: venv
	$(PY) -c 'import sys, tracedpool._telemetry.names as n; sys.exit(n.main(["--write", "docs/names.md"]))'

clean:
	rm -rf $(VENV) .venv-* build *.egg-info .pytest_cache .mypy_cache .ruff_cache
