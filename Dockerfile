# syntax=docker/dockerfile:1
# CPU image:  docker build -t rtserver .
# GPU image:  docker build --target gpu -t rtserver:gpu .   (run with --gpus all)
# Everything the server needs is baked in: the detector in models/, Whisper tiny.en and the Piper
# voice as pip wheels, espeak-ng for the fallback voice. Nothing is downloaded at start.
# The CMD's --host/--port win over HOST/PORT: to serve on another port, override the command and
# set PORT too (the HEALTHCHECK probes 127.0.0.1:$PORT), as deploy/compose.yaml does.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

FROM ${PYTHON_IMAGE} AS cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False ORT_DISABLE_TELEMETRY=1 HOST=0.0.0.0 PORT=8000
RUN apt-get update && apt-get install -y --no-install-recommends espeak-ng libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md NOTICE ./
COPY server server
COPY streams streams
COPY static static
COPY models models
RUN pip install -e . && useradd --create-home --uid 10001 app && mkdir -p /tmp/rtserver && chown app /tmp/rtserver
USER app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["python", "-m", "server.healthcheck"]
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000"]

FROM ${CUDA_IMAGE} AS gpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False ORT_DISABLE_TELEMETRY=1 HOST=0.0.0.0 PORT=8000 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
    espeak-ng libgomp1 && rm -rf /var/lib/apt/lists/* && ln -sf /usr/bin/python3 /usr/local/bin/python
WORKDIR /app
COPY pyproject.toml README.md NOTICE ./
COPY server server
COPY streams streams
COPY static static
COPY models models
# onnxruntime and onnxruntime-gpu provide the same module: keep only the CUDA build (as `make gpu`).
RUN python -m pip install -e '.[gpu]' && python -m pip uninstall -y onnxruntime \
    && python -m pip install --force-reinstall --no-deps "$(python -m pip list --format=freeze | grep -i '^onnxruntime-gpu==')" \
    && useradd --create-home --uid 10001 app && mkdir -p /tmp/rtserver && chown app /tmp/rtserver
USER app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["python", "-m", "server.healthcheck"]
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000"]
