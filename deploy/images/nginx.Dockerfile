# nginx from Debian's package, for deploy/compose.yaml (which mounts the configuration from
# deploy/nginx and the certificate from deploy/certs). Any Debian bookworm base works: the default
# needs a registry, `make docker-base` makes one from Debian packages.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
# SIGQUIT: finish the requests in flight, then exit
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
