# The two commands a new user needs: `make demo` and `make test`. Each sets up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test benchmark check clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) airtable_sync.py --demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

benchmark: $(VENV)/.installed
	$(PY) tests/benchmark.py

check: $(VENV)/.installed
	$(PY) airtable_sync.py --check

clean:
	rm -rf $(VENV) .pytest_cache
