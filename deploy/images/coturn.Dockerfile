# coturn from Debian's package, for deploy/compose.yaml (which mounts deploy/turnserver.conf and adds
# the secret, external IP and realm as arguments). Runs as Debian's unprivileged `turnserver` user:
# its ports (3478, relays 49160-49200) need no root. Under tini: as PID 1, turnserver would ignore
# SIGTERM and every `docker stop` would wait 10 s for SIGKILL.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends coturn tini \
    && rm -rf /var/lib/apt/lists/*
USER turnserver
ENTRYPOINT ["tini", "--", "turnserver", "--pidfile=/var/tmp/turnserver.pid"]
