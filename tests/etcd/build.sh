#!/bin/sh
# Build the etcd pinned in tests/etcd/go.mod into
# ${XDG_CACHE_HOME:-$HOME/.cache}/meshdns-tests/etcd-<version>/etcd, once.
# Prints the binary's path; exits non-zero when Go or the build is unavailable.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's/^require go\.etcd\.io\/etcd\/server\/v3 \(v[0-9.]*\)$/\1/p' "$here/go.mod")
[ -n "$version" ] || { echo "build.sh: no etcd server version in $here/go.mod" >&2; exit 1; }
dest="${XDG_CACHE_HOME:-$HOME/.cache}/meshdns-tests/etcd-${version#v}"
if [ -x "$dest/etcd" ]; then echo "$dest/etcd"; exit 0; fi
go=$(command -v go 2>/dev/null || true)
[ -n "$go" ] || { [ -x /usr/local/go/bin/go ] && go=/usr/local/go/bin/go; } || true
[ -n "$go" ] || { echo "build.sh: no Go toolchain (go or /usr/local/go/bin/go)" >&2; exit 1; }
mkdir -p "$dest"
(cd "$here" && GOFLAGS=-mod=readonly "$go" build -trimpath -o "$dest/etcd.partial" .)
mv "$dest/etcd.partial" "$dest/etcd"
echo "$dest/etcd"
