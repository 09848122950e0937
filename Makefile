# Two entry points for a new user: `make demo` (set up, train a tiny BERT and a tiny GPT on the
# embedded corpus) and `make test` (set up, lint, type-check, run the test suite on CPU).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install install-test demo test lint tcmalloc clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(PY) -m bertgpt_jax.demo --workdir runs/demo

lint: install-test
	$(VENV)/bin/ruff check bertgpt_jax tests launch benchmarks
	$(VENV)/bin/ruff format --check bertgpt_jax tests launch benchmarks
	$(VENV)/bin/mypy bertgpt_jax
	$(VENV)/bin/lint-imports  # .importlinter: nothing imports upward

test: lint
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(VENV)/bin/pytest -q tests

# Optional, Debian/Ubuntu: the allocator `bertgpt` preloads when it is installed (see
# bertgpt_jax/allocator.py; about 20% faster CPU steps). Needs root or sudo.
tcmalloc:
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y libtcmalloc-minimal4

clean:
	rm -rf $(VENV) runs
