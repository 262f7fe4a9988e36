#!/bin/sh
# Builds the CoreDNS the tests run (main.go: CoreDNS's coremain with only the
# plugins they use), once, into a cache directory outside the repository, and
# prints the binary's path. The cache key is the CoreDNS version plus a hash of
# go.mod, go.sum and main.go, so a change here builds anew.
#
# When it cannot build for a reason outside the repository (no Go new enough,
# the Go module proxy refusing a module) it prints nothing on stdout, says why
# on stderr and exits 0: the CoreDNS tests then skip with that reason. A
# compile error exits non-zero.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's|^require github.com/coredns/coredns \(v[0-9.]*\)$|\1|p' "$here/go.mod")
need_go=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$here/go.mod")
[ -n "${HOME:-}" ] || HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
export HOME
key=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/meshdns-tests
dir=$cache/coredns-$version-$key
if [ -x "$dir/coredns" ]; then
  echo "$dir/coredns"
  exit 0
fi

skip() {
  echo "CoreDNS $version not built: $*" >&2
  exit 0
}

# $1 is at least $2 (plain versions such as 1.26.0)
at_least() { printf '%s\n%s\n' "$2" "$1" | sort -V -C; }

go=$(command -v go || true)
[ -n "$go" ] || [ ! -x /usr/local/go/bin/go ] || go=/usr/local/go/bin/go
if [ -z "$go" ]; then
  # Debian's golang-go, only when it is new enough (bookworm's 1.19 is not).
  apt_go=$(apt-cache policy golang-go 2>/dev/null | sed -n 's/^ *Candidate: \([0-9]*:\)\{0,1\}\([0-9.]*\).*/\2/p')
  if [ -z "$apt_go" ] || ! at_least "$apt_go" "$need_go"; then
    skip "Go $need_go or newer is needed and is not installed (apt offers golang-go ${apt_go:-none})"
  fi
  as_root=""
  [ "$(id -u)" = 0 ] || as_root="sudo"
  DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq --no-install-recommends golang-go </dev/null
  go=$(command -v go)
fi
have_go=$("$go" env GOVERSION | sed 's/^go//')
at_least "$have_go" "$need_go" || skip "Go $need_go or newer is needed, $go is $have_go"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
cd "$here"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "$go" mod download >"$log" 2>&1; then
  skip "the Go module proxy ($("$go" env GOPROXY)) refused a module: $(grep -m3 . "$log" | tr '\n' ' ')"
fi
# builds of other versions or sources are not used again
find "$cache" -mindepth 1 -maxdepth 1 -name 'coredns-*' ! -name "coredns-$version-$key" -exec rm -rf {} + 2>/dev/null || true
mkdir -p "$dir"
echo "building CoreDNS $version into $dir (once)" >&2
GOPROXY=off "$go" build -trimpath -buildvcs=false -ldflags="-s -w" -o "$dir/coredns.tmp" .
mv "$dir/coredns.tmp" "$dir/coredns"
echo "$dir/coredns"
