# The CPU image, and the default build:  docker build --network host -t rtserver .   (`make docker`)
# GPU image: Dockerfile.gpu, built on top of this one (`make docker-gpu`).
# No container registry? Make the base from Debian packages: `make docker-base`, then
#   make docker BASE_IMAGE=local/python:3.11-bookworm   (docs/deploy.md, section 0)
# Everything the server needs is baked in: the detector in models/, Whisper tiny.en and the Piper
# voice as pip wheels, espeak-ng for the fallback voice. Nothing is downloaded at start.
# The CMD's --host/--port win over HOST/PORT: to serve on another port, override the command and
# set PORT too (the HEALTHCHECK probes 127.0.0.1:$PORT), as deploy/compose.yaml does.
# One stage on purpose: the classic builder builds every stage before the target, so a second
# stage here would be built by every `docker build .`.

# Any image with Debian bookworm's Python 3.11, python3 -m venv and apt-get.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE} AS cpu

# pip settings for a proxy or a private index (pip reads them from the environment; unset by default):
# --build-arg PIP_INDEX_URL=https://pypi.internal/simple, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST, and
# CA_CERTIFICATES="$(cat proxy-ca.crt)" (PEM text, added to the system store) with
# PIP_CERT=/etc/ssl/certs/ca-certificates.crt (pip otherwise trusts only its own bundle).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ARG CA_CERTIFICATES

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False ORT_DISABLE_TELEMETRY=1 HOST=0.0.0.0 PORT=8000 \
    VIRTUAL_ENV=/opt/rtserver PATH=/opt/rtserver/bin:$PATH

# Debian packages and the venv (its own, so the same steps work on the official image and on a
# Debian base whose python3 is "externally managed").
RUN if [ -n "$CA_CERTIFICATES" ]; then \
        printf '%s\n' "$CA_CERTIFICATES" > /usr/local/share/ca-certificates/build-arg.crt \
        && update-ca-certificates; \
    fi \
    && apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        espeak-ng libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv $VIRTUAL_ENV \
    && useradd --create-home --uid 10001 app && mkdir -p /tmp/rtserver && chown app /tmp/rtserver

# The dependencies, before the code: this slow layer is rebuilt only when the pins change.
COPY requirements/runtime.txt /opt/requirements/runtime.txt
RUN pip install --no-deps -r /opt/requirements/runtime.txt

WORKDIR /app
COPY pyproject.toml README.md NOTICE ./
COPY server server
COPY streams streams
COPY static static
COPY models models
# Editable: the server finds static/ and models/ next to its package. `pip check` fails the build if
# pyproject.toml asks for something runtime.txt lacks (regenerate it: deploy/lock.py). Compiled
# here because the app user cannot write /app.
RUN pip install --no-deps --no-build-isolation -e . && pip check && rm -rf build \
    && python -m compileall -q server streams

USER app
EXPOSE 8000
# The file, not `-m server.healthcheck`: importing the `server` package loads fastrtc and gradio (4-5 s,
# past the 5 s timeout on a busy machine); the script alone needs only the standard library (0.1 s).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["python", "server/healthcheck.py"]
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000"]
