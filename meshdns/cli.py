"""Command line: `meshdns serve` and friends. argv -> Config -> app."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from . import __version__
from .config import ConfigError, load_config, with_overrides


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the DNS server and HTTP API")
    p.add_argument("--config", help="TOML config file (every key optional)")
    p.add_argument("--dns", help="DNS listen address host:port, UDP and TCP (default 127.0.0.1:8600)")
    p.add_argument("--http", help="HTTP API listen address host:port (default 127.0.0.1:8500)")
    p.add_argument("--http-insecure", action="store_true", default=None,
                   help="allow the API on a non-loopback address without ACL tokens")
    p.add_argument("--http-tls-cert", help="TLS certificate (PEM) for the HTTP API")
    p.add_argument("--http-tls-key", help="TLS private key (PEM) for the HTTP API")
    p.add_argument("--data-dir", help="where registrations are stored (default .meshdns)")
    p.add_argument("--zones", help="zones directory (default zones)")
    p.add_argument("--domain", help="DNS domain (default consul.)")
    p.add_argument("--alt-domain", help="a second domain answered the same way")
    p.add_argument("--datacenter", help="our datacenter name (default dc1)")
    p.add_argument("--recursor", action="append", help="upstream DNS server ip[:port], repeatable")
    p.add_argument("--kubeconfig", help="kubeconfig for a single Kubernetes cluster")
    p.add_argument("--kube-context", help="kubeconfig context")
    p.add_argument("--workers", type=_workers, help="DNS worker processes (SO_REUSEPORT), or 'auto'")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--store-backend", choices=("sqlite", "etcd"), help="where the shared state lives (default "
                   "sqlite under --data-dir; etcd: several replicas)")
    p.add_argument("--store-endpoints", help="etcd client URLs, comma-separated (with --store-backend etcd)")
    p.add_argument("--advertise", help="host:port the other replicas and /v1/status/* give for this one's API "
                   "([store] advertise; default its --http address)")


def _workers(text: str) -> int:
    """'auto' = one per core; the range is checked with the rest of the config (dns.workers)."""
    if text == "auto":
        import os
        return os.cpu_count() or 1
    return int(text)


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(args: argparse.Namespace) -> int:
    try:
        cfg = with_overrides(load_config(args.config), **{k: v for k, v in vars(args).items()
                                                           if k not in ("config", "command")})
    except ConfigError as exc:
        print(f"meshdns: config error: {exc}", file=sys.stderr)
        return 2
    # process-wide settings, made here once: the server owns this process
    setup_logging(cfg.log_level)
    from . import app as app_module
    from .api.app import OncePer, http_log
    http_log.addFilter(OncePer(10.0))
    if cfg.peers:
        app_module.raise_open_files_limit()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    def ready(app) -> None:
        app_module.settle_gc()
        waiting = "" if app.zones.ready else " (zone files failed to load: /readyz answers 503 until they are fixed)"
        print(f"meshdns ready dns={cfg.dns.listen[0]}:{app.dns_port} http={cfg.http.listen[0]}:{app.http_port}"
              f"{waiting}", flush=True)

    async def main() -> None:
        await app_module.run(app_module.build(cfg), on_ready=ready)

    return run_server(main)


def run_server(main) -> int:
    """Run the server to its end; the exit status, and one log line saying why it stopped early."""
    from .lifecycle import ComponentFailed
    from .store.kv import StoreError
    log = logging.getLogger("meshdns")
    try:
        asyncio.run(main())
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except ConfigError as exc:
        log.error("config error: %s", exc)
        return 2
    except StoreError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except ComponentFailed as exc:
        log.error("stopped: %s", exc, exc_info=exc.error)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshdns", description="service directory and DNS for Kubernetes + VMs")
    parser.add_argument("--version", action="version", version=f"meshdns {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    from . import client, query
    from .store import migrate
    client.add_parsers(sub)
    query.add_parser(sub)
    migrate.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command in ("register", "deregister"):
        return client.main(args)
    if args.command == "query":
        return query.main(args)
    if args.command == "store":
        return migrate.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
