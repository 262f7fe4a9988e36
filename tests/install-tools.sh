#!/bin/sh
# System tools the tests use: dig (bind9-dnsutils), unbound, curl, ss (iproute2),
# mkfs.ext4/e2fsck (e2fsprogs), openssl and chromium (the web page's tests; Playwright
# drives Debian's build, no browser download); and, built from the Go module proxy once
# into ~/.cache: CoreDNS (tests/coredns/build.sh) and a 3.6 etcd (tests/etcd/build.sh;
# Debian's etcd-server is the fallback when Go is missing).
# Installs only what is missing; needs Debian/Ubuntu (apt-get) and root or sudo.
set -eu
here=$(dirname "$0")
need=""
command -v dig >/dev/null 2>&1 || need="$need bind9-dnsutils"
command -v unbound >/dev/null 2>&1 || [ -x /usr/sbin/unbound ] || need="$need unbound"
command -v curl >/dev/null 2>&1 || need="$need curl"
command -v ss >/dev/null 2>&1 || need="$need iproute2"
[ -x /usr/bin/chromium ] || need="$need chromium"
command -v mkfs.ext4 >/dev/null 2>&1 || [ -x /sbin/mkfs.ext4 ] || need="$need e2fsprogs"  # disk-full / read-only tests
command -v openssl >/dev/null 2>&1 || need="$need openssl"     # certificates for the API over TLS
if ! sh "$here/etcd/build.sh" >/dev/null; then                 # the store tests' etcd members
  command -v etcd >/dev/null 2>&1 || need="$need etcd-server"
fi
if [ -n "$need" ]; then
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
  if command -v systemctl >/dev/null 2>&1; then
    # Debian starts unbound (port 53) and etcd-server (2379) as services; the tests run their own.
    $as_root systemctl disable --now unbound >/dev/null 2>&1 || true
    case "$need" in *etcd-server*) $as_root systemctl disable --now etcd >/dev/null 2>&1 || true ;; esac
  fi
fi
sh "$here/coredns/build.sh" >/dev/null
