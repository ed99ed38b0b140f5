# Two entry points: `make demo` and `make test`. Both create .venv and install pinned
# dependencies on first use (torch==2.13.0 first, so nothing pulls a second torch build).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	# torchattacks' metadata pins torchvision and an old requests: install it alone.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps torchattacks==3.5.1
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/robustgan demo

# lint-imports checks the layers contract in pyproject.toml (an upward import fails here).
# `.venv/bin/python -m pytest -m "not slow"` skips the tests that train full digits presets.
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

# ART is a benchmark peer only (not a dependency): pinned, without its optional extras.
bench: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps adversarial-robustness-toolbox==1.20.1 six==1.17.0 tqdm==4.70.1
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) runs .pytest_cache
