#!/bin/sh
# System tools the tests use: dig (bind9-dnsutils), unbound, curl, ss (iproute2),
# mkfs.ext4/e2fsck (e2fsprogs) and openssl.
# Installs only what is missing; needs Debian/Ubuntu (apt-get) and root or sudo.
set -eu
need=""
command -v dig >/dev/null 2>&1 || need="$need bind9-dnsutils"
command -v unbound >/dev/null 2>&1 || [ -x /usr/sbin/unbound ] || need="$need unbound"
command -v curl >/dev/null 2>&1 || need="$need curl"
command -v ss >/dev/null 2>&1 || need="$need iproute2"
[ -x /usr/bin/chromium ] || need="$need chromium"              # the web page's tests (Playwright drives it; no download)
command -v mkfs.ext4 >/dev/null 2>&1 || [ -x /sbin/mkfs.ext4 ] || need="$need e2fsprogs"  # disk-full / read-only tests
command -v openssl >/dev/null 2>&1 || need="$need openssl"     # certificates for the API over TLS
[ -z "$need" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install these with your package manager:$need" >&2
  exit 1
fi
as_root=""
[ "$(id -u)" = 0 ] || as_root="sudo"
export DEBIAN_FRONTEND=noninteractive
$as_root apt-get update -qq
# shellcheck disable=SC2086
$as_root apt-get install -y -qq --no-install-recommends $need
# Debian starts unbound as a system service on port 53; the tests run their own.
if command -v systemctl >/dev/null 2>&1; then $as_root systemctl disable --now unbound >/dev/null 2>&1 || true; fi
