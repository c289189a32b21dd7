# Two commands on a fresh machine: `make run` and `make test` (see README).
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
APT_PACKAGES := chromium coturn espeak-ng sox nginx strace

.PHONY: run test lint bench system-deps gpu clean

$(VENV)/.run-installed: pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.run-installed
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.run-installed
	$(PYTHON) -m server --host $(HOST) --port $(PORT)

# Debian packages the tests drive for real (browser, TURN server, speech, proxy, network audit); installed when we are root.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v turnserver >/dev/null || missing="$$missing coturn"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null || missing="$$missing sox"; \
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	command -v strace >/dev/null || missing="$$missing strace"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
		else \
			echo "WARNING: missing$$missing (run as root or install them); tests that need them will be skipped"; \
		fi; \
	fi

lint: $(VENV)/.dev-installed
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

# Two passes: everything that asserts no timing, in TEST_WORKERS processes (one module per worker at
# a time), then the tests marked `serial` (rates, latency, CPU) alone, so no neighbour skews them.
TEST_WORKERS ?= 2
test: $(VENV)/.dev-installed system-deps lint
	$(PYTHON) -m pytest -m "not serial" -n $(TEST_WORKERS) --dist loadfile; parallel=$$?; \
	$(PYTHON) -m pytest -m serial; serial=$$?; \
	echo "parallel pass: exit $$parallel; serial pass: exit $$serial"; \
	[ $$parallel = 0 ] && [ $$serial = 0 ]

bench: $(VENV)/.dev-installed
	$(PYTHON) -m bench

# Swap in the CUDA build of onnxruntime (both wheels provide the same module, so one must go).
gpu: $(VENV)/.run-installed
	$(PYTHON) -m pip uninstall --quiet -y onnxruntime
	$(PYTHON) -m pip install --quiet -e '.[gpu]'

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache .ruff_cache
