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
# `.venv/bin/python -m pytest -m "not slow"` skips the tests that train digits presets (at test size).
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n 2 --dist worksteal

# ART is a benchmark peer only (not a dependency): pinned, without its optional extras.
bench: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps adversarial-robustness-toolbox==1.20.1 six==1.17.0 tqdm==4.70.1
	# adv_lib is the eval benchmark's second APGD-CE + APGD-T peer, installed without its dependencies:
	# torchvision does not import with the CPU torch, and the benchmark loads only adv_lib's auto_pgd module.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps adv-lib==0.2.8
	# Foolbox 3 is the eval benchmark's PGD peer (`benchmarks/run.py --only eval`): pinned with the
	# pure-Python packages it imports (GitPython needs a git executable; without one it is skipped).
	$(PY) -m pip install -q --disable-pip-version-check --no-deps foolbox==3.3.4 eagerpy==0.30.0 gitpython==3.2.1 \
		gitdb==4.0.12 smmap==5.0.3 requests==2.34.2 urllib3==2.8.0 idna==3.20 charset-normalizer==3.5.2 certifi==2026.10.18
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) runs .pytest_cache
