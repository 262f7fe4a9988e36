// Command coredns is CoreDNS with only the plugins the meshdns tests use: the
// stub-domain block of deploy/coredns/Corefile.consul (errors, cache,
// forward), log to see the queries, bind to keep every listener on loopback,
// and prometheus (linked in by forward and cache already) to read the
// forward plugin's health-check counters.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/metrics"
)

// In CoreDNS's own order (core/dnsserver/zdirectives.go): a query passes the
// plugins of a server block in this order, whatever the Corefile's order.
var directives = []string{"bind", "prometheus", "errors", "log", "cache", "forward"}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
