# dwc — `make demo` trains the demo experiment; `make test` runs the whole test suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean venv

venv: $(STAMP)

# Reinstall only when the project metadata changed. torch/torchvision come from the local wheel cache via pip.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(PIP) install --quiet torch torchvision
	$(PIP) install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dwc run demo

# The `slurm` tests need a Slurm cluster: reuse a running test cluster, else start one (root on Debian: installs
# slurm-wlm + munge if missing) and stop it afterwards, Ctrl-C included; otherwise say why they are skipped.
test: $(STAMP)
	@if scripts/slurm-cluster.sh env >/dev/null 2>&1; then \
		echo "slurm tests: using the running test cluster"; \
		eval "$$(scripts/slurm-cluster.sh env)"; \
	elif why=$$(scripts/slurm-cluster.sh up 2>&1 >/dev/null); then \
		trap 'scripts/slurm-cluster.sh down' EXIT INT TERM; \
		eval "$$(scripts/slurm-cluster.sh env)"; \
		echo "slurm tests: started a one-node test cluster ($$SLURM_CONF)"; \
	else \
		echo "slurm tests will be skipped: $$why"; \
	fi; \
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) bench/recall.py
	$(PY) bench/train_step.py
	$(PY) bench/data_loading.py
	$(PY) bench/demo.py
	$(PY) bench/eval.py
	$(PY) bench/registry.py
	$(PY) bench/tui_poll.py
	$(PY) bench/tui_start.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
