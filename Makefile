# Two commands on a fresh machine: `make run` and `make test` (see README).
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
APT_PACKAGES := chromium coturn espeak-ng sox nginx strace python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good

.PHONY: run test lint bench system-deps docker-daemon docker-base docker docker-gpu gpu clean

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

# Debian packages the tests drive for real (browser, TURN server, speech, proxy, network audit, RTSP server); installed when we are root.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v turnserver >/dev/null || missing="$$missing coturn"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null || missing="$$missing sox"; \
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	command -v strace >/dev/null || missing="$$missing strace"; \
	/usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0")' 2>/dev/null || missing="$$missing gst-rtsp-server"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
		else \
			echo "WARNING: missing$$missing (run as root or install them); tests that need them will be skipped"; \
		fi; \
	fi

# A Docker daemon for tests/test_docker.py. As root: install Debian's docker.io (with debootstrap and
# docker-compose, which the tests use) if missing, and start dockerd in the background if none
# answers (log in DOCKERD_LOG). dockerd picks its storage driver itself (overlay2 where the kernel
# has it); if it cannot start with its iptables rules, it is started without them and without the
# default bridge: the images are built and run with --network host (or none) anyway.
DOCKERD_LOG ?= /var/log/rtserver-dockerd.log
docker-daemon:
	@missing=""; \
	command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi; \
	if docker info >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v dockerd >/dev/null; then \
		echo "WARNING: no Docker daemon answers and this is not root: tests/test_docker.py will be skipped"; \
		exit 0; \
	fi; \
	for flags in "" "--iptables=false --bridge=none"; do \
		echo "starting dockerd$${flags:+ $$flags} (log: $(DOCKERD_LOG))"; \
		setsid dockerd $$flags >>$(DOCKERD_LOG) 2>&1 < /dev/null & \
		for i in $$(seq 60); do docker info >/dev/null 2>&1 && exit 0; kill -0 $$! 2>/dev/null || break; sleep 0.5; done; \
		kill $$! 2>/dev/null; wait $$! 2>/dev/null; \
	done; \
	echo "WARNING: dockerd did not start (see $(DOCKERD_LOG)): tests/test_docker.py will be skipped"; \
	tail -n 5 $(DOCKERD_LOG)

# Images (docs/deploy.md). With no container registry: `make docker-base docker BASE_IMAGE=$(LOCAL_BASE)`.
BASE_IMAGE ?= python:3.11-slim-bookworm
LOCAL_BASE ?= local/python:3.11-bookworm
IMAGE ?= rtserver
GPU_IMAGE ?= $(IMAGE):gpu
docker-base:
	deploy/base-image.sh $(LOCAL_BASE)

docker:
	docker build --network host --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) .

# The GPU image is the CPU image with onnxruntime swapped for onnxruntime-gpu and NVIDIA's CUDA wheels
# (CUDA_EXTRAS= leaves those out: tests/test_docker.py, on a machine without a GPU).
CUDA_EXTRAS ?= cuda,cudnn
docker-gpu: docker
	docker build --network host -f Dockerfile.gpu --build-arg CPU_IMAGE=$(IMAGE) \
		--build-arg CUDA_EXTRAS=$(CUDA_EXTRAS) -t $(GPU_IMAGE) .

lint: $(VENV)/.dev-installed
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

# Two passes: everything that asserts no timing, in TEST_WORKERS processes (one module per worker at
# a time), then the tests marked `serial` (rates, latency, CPU) alone, so no neighbour skews them.
TEST_WORKERS ?= 2
test: $(VENV)/.dev-installed system-deps docker-daemon lint
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
