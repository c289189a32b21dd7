#!/bin/sh
# deploy/base-image.sh [TAG]: a stand-in for python:3.11-slim-bookworm made from Debian packages, for
# machines that reach Debian's and Python's package registries but no container registry (there,
# `FROM python:...` cannot be pulled). Debian bookworm's python3 is 3.11, like the official image.
#   deploy/base-image.sh                                   # -> local/python:3.11-bookworm
#   docker build --network host --build-arg BASE_IMAGE=local/python:3.11-bookworm -t rtserver .
# `make docker-base` runs this. Needs root, debootstrap and a Docker daemon. Does nothing if TAG exists
# (REBUILD=1 forces a new one). The host's extra CA certificates (/usr/local/share/ca-certificates,
# e.g. a TLS-intercepting proxy's) are trusted inside, by apt and by pip (/etc/pip.conf).
# Environment: DEBIAN_MIRROR (default: the host's Debian mirror, else deb.debian.org),
# DEBIAN_SECURITY_MIRROR (default http://deb.debian.org/debian-security).
set -eu

TAG=${1:-local/python:3.11-bookworm}
SUITE=bookworm

if [ -z "${REBUILD:-}" ] && docker image inspect "$TAG" >/dev/null 2>&1; then
	echo "base image $TAG exists (REBUILD=1 to make it again)"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "error: debootstrap needs root" >&2
	exit 1
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }

# The mirror the host's apt already reaches (deb822 or one-line sources), so no new access is needed.
host_mirror() {
	cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
		| awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }'
	awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true
}
MIRROR=${DEBIAN_MIRROR:-$(host_mirror | head -n 1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

ROOT=$(mktemp -d /var/tmp/rtserver-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
start=$(date +%s)
echo "debootstrap $SUITE from $MIRROR into $ROOT"
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
	"$SUITE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || { tail -n 30 "$ROOT.log" >&2; exit 1; }
rm -f "$ROOT.log"

# apt sources as the official Debian images have them: the release, its updates, security.
rm -f "$ROOT/etc/apt/sources.list"
cat >"$ROOT/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

# Trust what the host trusts beyond Mozilla's list; pip (which otherwise uses its own bundle) too.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
	cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
fi
chroot "$ROOT" update-ca-certificates >/dev/null 2>&1
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOT/etc/pip.conf"

# As in the official Debian images: packages installed during a build never start their services
# (nginx's would bind port 80 of the host under `docker build --network host`).
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 0755 "$ROOT/usr/sbin/policy-rc.d"

chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log
chmod 0755 "$ROOT" # mktemp made it 0700, which would lock a non-root USER out of /

tar --numeric-owner -C "$ROOT" -c . | docker import \
	--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	--change 'ENV LANG=C.UTF-8' \
	--change 'CMD ["python3"]' \
	--message "debootstrap --variant=minbase $SUITE + python3 python3-venv ($MIRROR)" \
	- "$TAG" >/dev/null
echo "base image $TAG made in $(($(date +%s) - start)) s"
