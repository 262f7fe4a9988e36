// The etcd server the meshdns tests run: upstream etcdmain, pinned in go.mod,
// built from the Go module proxy by build.sh into a cache outside the repository.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
