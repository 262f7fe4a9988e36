"""TOML + flags -> one frozen Config. The only place that reads configuration.

Every key is optional; unknown keys are an error naming the key, because a
typo that silently falls back to a default is worse than a refusal to start.
"""
from __future__ import annotations

import ipaddress
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A configuration value a user must fix; the message names the key."""


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, *, key: str) -> float:
    """Go-style durations ("10s", "1m30s", "250ms") or plain seconds, as Consul takes them."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like \"10s\", got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"{key}: duration must not be negative")
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: expected a duration like \"10s\", got {value!r}")
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ConfigError(f"{key}: cannot parse duration {value!r} (use e.g. \"500ms\", \"10s\", \"1m\")")
    return total


def parse_hostport(value: str, *, key: str, default_port: int) -> tuple[str, int]:
    """"1.2.3.4", "1.2.3.4:53", "[::1]:53", "::1" -> (host, port)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected \"host:port\", got {value!r}")
    host, port = value, default_port
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ConfigError(f"{key}: unbalanced '[' in {value!r}")
        host = value[1:end]
        rest = value[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{key}: bad address {value!r}")
            port = _port(rest[1:], key=key)
    elif value.count(":") == 1:
        host, p = value.split(":")
        port = _port(p, key=key)
    if not host:
        raise ConfigError(f"{key}: missing host in {value!r}")
    return host, port


def _port(text: str, *, key: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ConfigError(f"{key}: bad port {text!r}")
    return int(text)


def normalize_domain(value: str, *, key: str) -> str:
    """Lower-case, fully qualified ("consul" -> "consul.")."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a domain name, got {value!r}")
    value = value.strip().lower()
    if not value:
        return ""
    if not value.endswith("."):
        value += "."
    if not all(_LABEL.fullmatch(label) for label in value[:-1].split(".")):
        raise ConfigError(f"{key}: {value!r} is not a valid domain name")
    return value


_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True, slots=True)
class SoaConfig:
    min_ttl: int = 0
    refresh: int = 3600
    retry: int = 600
    expire: int = 86400


@dataclass(frozen=True, slots=True)
class DnsConfig:
    listen: tuple[str, int] = ("127.0.0.1", 8600)
    only_passing: bool = False
    a_record_limit: int = 0
    enable_truncate: bool = True
    node_ttl: float = 0.0
    service_ttl: tuple[tuple[str, float], ...] = (("*", 0.0),)
    soa: SoaConfig = field(default_factory=SoaConfig)
    udp_payload: int = 1232
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 1024
    workers: int = 1
    rrl_responses_per_second: int = 0
    rrl_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    rng_seed: int | None = None       # reproducible shuffles and split choices (tests, demos)
    busy_poll: float = 100e-6         # poll the UDP socket this long before sleeping, under steady load
    drain_timeout: float = 2.0        # on SIGTERM, in-flight answers get this long to finish
    prefer_same_zone: bool = False    # A/AAAA from the client's zone when it has enough healthy instances
    same_zone_min: int = 1            # ... at least this many
    enforce_intentions: bool = False  # a name the client may not reach is answered as one that does not exist
    intentions_default: str = "allow"  # no entry, or no source of it matching the client
    reply_cache_mb: int = 16          # rendered replies kept per client class and transport (0: none kept)
    max_client_classes: int = 256     # client classes with replies kept; beyond: the oldest goes
    max_plans: int = 200_000          # compiled answer plans kept (name, type, class)


@dataclass(frozen=True, slots=True)
class AclToken:
    secret: str
    write: tuple[str, ...] = ()
    management: bool = False
    read: bool = True
    secret_file: str = ""   # where `secret` is read from at start-up (e.g. a mounted Kubernetes Secret)


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: tuple[str, int] = ("127.0.0.1", 8500)
    insecure: bool = False
    anonymous_read: bool = True
    tls_cert: str = ""
    tls_key: str = ""
    max_body: int = 1 << 20
    max_blocking_queries: int = 4096
    idle_timeout: float = 30.0        # a request head (or body) not complete by then: connection closed
    max_wait: float = 600.0           # the longest ?wait= a blocking query may ask for (Consul: 10m)


@dataclass(frozen=True, slots=True)
class ForwardZone:
    name: str
    servers: tuple[tuple[str, int], ...]


DEFAULT_ALLOW_RECURSION = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12",
                           "192.168.0.0/16", "fc00::/7")


@dataclass(frozen=True, slots=True)
class ForwardingConfig:
    recursors: tuple[tuple[str, int], ...] = ()
    strategy: str = "sequential"
    timeout: float = 2.0
    allow_recursion: tuple[str, ...] = DEFAULT_ALLOW_RECURSION
    zones: tuple[ForwardZone, ...] = ()


@dataclass(frozen=True, slots=True)
class CacheConfig:
    max_entries: int = 100_000
    min_ttl: float = 0.0
    max_ttl: float = 3600.0
    serve_stale: float = 3600.0


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    name: str = "default"
    kubeconfig: str = ""
    context: str = ""
    in_cluster: bool = False
    datacenter: str = ""
    address_mode: str = "auto"
    nodeport_address: str = "internal"
    allow_namespaces: tuple[str, ...] = ("*",)
    deny_namespaces: tuple[str, ...] = ("kube-system", "kube-public")
    namespace_suffix: bool = False
    sync_to_kubernetes: str = "off"
    write_namespace: str = "default"
    watch_timeout: float = 300.0
    watch_idle_timeout: float = 60.0  # a watch with no bytes (not even a bookmark) this long is dead
    request_timeout: float = 30.0
    backoff: float = 0.5
    max_backoff: float = 30.0


@dataclass(frozen=True, slots=True)
class HealthConfig:
    max_in_flight: int = 64           # probes running at once, over every check
    output_max_size: int = 4096       # bytes of a check's output kept (Consul's check_output_max_size)


@dataclass(frozen=True, slots=True)
class UiConfig:
    topology: bool = True             # count (client, name) per minute for GET /v1/meshdns/topology
    topology_window: float = 900.0    # the longest window the topology keeps and answers (seconds)
    topology_max_keys: int = 10_000   # distinct (client, name) pairs per minute; beyond: dropped, counted


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """Another datacenter whose catalog is imported through its Consul-shaped HTTP API."""

    datacenter: str
    url: str                                  # scheme://host:port, no trailing slash
    token_file: str = ""
    token: str = field(default="", repr=False)  # token_file's contents, sent as X-Consul-Token
    services: tuple[str, ...] = ("*",)        # globs of service names to import
    wait: float = 300.0                       # blocking-query wait asked of the peer
    timeout: float = 10.0                     # each request may take this much beyond its wait
    backoff: float = 0.25                     # first delay after an error, doubling up to max_backoff
    max_backoff: float = 30.0
    sync_concurrency: int = 64                # plain (non-blocking) reads in flight at once


STORE_BACKENDS = ("sqlite", "etcd")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where the writable state lives: SQLite under data_dir (one server), or etcd (several replicas)."""

    backend: str = "sqlite"
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    prefix: str = "/meshdns/"
    timeout: float = 5.0
    member_ttl: float = 10.0          # whole seconds (an etcd lease's TTL)
    advertise: str = ""               # host:port of this replica's HTTP API for the others; "" = its listen address
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password_file: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    domain: str = "consul."
    alt_domain: str = ""
    datacenter: str = "dc1"
    data_dir: str = ".meshdns"
    zones: str = "zones"
    zones_poll_interval: float = 1.0  # how often the zones directory is checked for changed files
    log_level: str = "info"
    dns: DnsConfig = field(default_factory=DnsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    acl_tokens: tuple[AclToken, ...] = ()
    forwarding: ForwardingConfig = field(default_factory=ForwardingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    kubernetes: tuple[KubernetesConfig, ...] = ()
    health: HealthConfig = field(default_factory=HealthConfig)
    ui: UiConfig = field(default_factory=UiConfig)
    localities: tuple[tuple[str, str], ...] = ()   # [[locality]]: (cidr, zone), in file order
    peers: tuple[PeerConfig, ...] = ()
    store: StoreConfig = field(default_factory=StoreConfig)
    node_name: str = ""               # the agent node's name; "" = the host name ("meshdns" on etcd)

    @property
    def domains(self) -> tuple[str, ...]:
        return (self.domain,) + ((self.alt_domain,) if self.alt_domain else ())


# ---------------------------------------------------------------------------
# parsing


class _Table:
    """Reads typed keys out of one TOML table and rejects the keys nobody read."""

    def __init__(self, data: Any, path: str):
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or 'config'}: expected a table")
        self.data, self.path, self.seen = data, path, set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.seen.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise ConfigError(f"{self.key(name)}: expected {want}, got {value!r}")
        return value

    def duration(self, name: str, default: float) -> float:
        self.seen.add(name)
        if name not in self.data:
            return default
        return parse_duration(self.data[name], key=self.key(name))

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(name, list, None)
        if value is None:
            return default
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.key(name)}: expected a list of strings")
        return tuple(value)

    def sub(self, name: str) -> "_Table":
        return _Table(self.get(name, dict, {}), self.key(name))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(f"unknown key {self.key(unknown[0])!r}")


def _cidrs(values: tuple[str, ...], *, key: str) -> tuple[str, ...]:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ConfigError(f"{key}: {v!r} is not a CIDR") from None
    return values


def _servers(values: tuple[str, ...], *, key: str) -> tuple[tuple[str, int], ...]:
    out = []
    for v in values:
        host, port = parse_hostport(v, key=key, default_port=53)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{key}: {host!r} is not an IP address") from None
        out.append((host, port))
    return tuple(out)


def _choice(value: str, choices: tuple[str, ...], *, key: str) -> str:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    return value


def _parse_dns(t: _Table) -> DnsConfig:
    d = DnsConfig()
    listen = parse_hostport(t.get("listen", str, "127.0.0.1:8600"), key=t.key("listen"), default_port=8600)
    ttl_map = t.get("service_ttl", dict, None)
    service_ttl = d.service_ttl
    if ttl_map is not None:
        service_ttl = tuple((str(k).lower(), parse_duration(v, key=f"{t.key('service_ttl')}.{k}"))
                            for k, v in ttl_map.items())
    soa_t = t.sub("soa")
    soa = SoaConfig(**{k: soa_t.get(k, int, getattr(SoaConfig(), k)) for k in ("min_ttl", "refresh", "retry", "expire")})
    soa_t.done()
    cfg = DnsConfig(
        listen=listen,
        only_passing=t.get("only_passing", bool, d.only_passing),
        a_record_limit=t.get("a_record_limit", int, d.a_record_limit),
        enable_truncate=t.get("enable_truncate", bool, d.enable_truncate),
        node_ttl=t.duration("node_ttl", d.node_ttl),
        service_ttl=service_ttl,
        soa=soa,
        udp_payload=t.get("udp_payload", int, d.udp_payload),
        tcp_idle_timeout=t.duration("tcp_idle_timeout", d.tcp_idle_timeout),
        tcp_max_connections=t.get("tcp_max_connections", int, d.tcp_max_connections),
        workers=t.get("workers", int, d.workers),
        rrl_responses_per_second=t.get("rrl_responses_per_second", int, d.rrl_responses_per_second),
        rrl_exempt=_cidrs(t.strings("rrl_exempt", d.rrl_exempt), key=t.key("rrl_exempt")),
        rng_seed=t.get("rng_seed", int, None),
        busy_poll=t.duration("busy_poll", d.busy_poll),
        drain_timeout=t.duration("drain_timeout", d.drain_timeout),
        prefer_same_zone=t.get("prefer_same_zone", bool, d.prefer_same_zone),
        same_zone_min=t.get("same_zone_min", int, d.same_zone_min),
        enforce_intentions=t.get("enforce_intentions", bool, d.enforce_intentions),
        intentions_default=_choice(t.get("intentions_default", str, d.intentions_default), ("allow", "deny"),
                                   key=t.key("intentions_default")),
        reply_cache_mb=t.get("reply_cache_mb", int, d.reply_cache_mb),
        max_client_classes=t.get("max_client_classes", int, d.max_client_classes),
        max_plans=t.get("max_plans", int, d.max_plans),
    )
    t.done()
    return cfg


def _parse_http(t: _Table) -> HttpConfig:
    d = HttpConfig()
    cfg = HttpConfig(
        listen=parse_hostport(t.get("listen", str, "127.0.0.1:8500"), key=t.key("listen"), default_port=8500),
        insecure=t.get("insecure", bool, d.insecure),
        anonymous_read=t.get("anonymous_read", bool, d.anonymous_read),
        tls_cert=t.get("tls_cert", str, ""),
        tls_key=t.get("tls_key", str, ""),
        max_body=t.get("max_body", int, d.max_body),
        max_blocking_queries=t.get("max_blocking_queries", int, d.max_blocking_queries),
        idle_timeout=t.duration("idle_timeout", d.idle_timeout),
        max_wait=t.duration("max_wait", d.max_wait),
    )
    t.done()
    return cfg


def _parse_acl(t: _Table) -> tuple[AclToken, ...]:
    tokens = []
    for i, raw in enumerate(t.get("tokens", list, [])):
        tt = _Table(raw, f"{t.key('tokens')}[{i}]")
        secret, secret_file = tt.get("secret", str, ""), tt.get("secret_file", str, "")
        if secret and secret_file:
            raise ConfigError(f"{tt.key('secret')}: give secret or secret_file, not both")
        if not (secret or secret_file):
            raise ConfigError(f"{tt.key('secret')}: required and must not be empty (or give secret_file)")
        tokens.append(AclToken(secret=secret, write=tt.strings("write", ()),
                               management=tt.get("management", bool, False),
                               read=tt.get("read", bool, True), secret_file=secret_file))
        tt.done()
    t.done()
    return tuple(tokens)


def _parse_forwarding(t: _Table) -> ForwardingConfig:
    d = ForwardingConfig()
    zones = []
    for i, raw in enumerate(t.get("zone", list, [])):
        zt = _Table(raw, f"{t.key('zone')}[{i}]")
        name = normalize_domain(zt.get("name", str, ""), key=zt.key("name"))
        if not name:
            raise ConfigError(f"{zt.key('name')}: required")
        servers = _servers(zt.strings("servers", ()), key=zt.key("servers"))
        if not servers:
            raise ConfigError(f"{zt.key('servers')}: at least one server is required")
        zones.append(ForwardZone(name=name, servers=servers))
        zt.done()
    cfg = ForwardingConfig(
        recursors=_servers(t.strings("recursors", ()), key=t.key("recursors")),
        strategy=_choice(t.get("strategy", str, d.strategy), ("sequential", "random"), key=t.key("strategy")),
        timeout=t.duration("timeout", d.timeout),
        allow_recursion=_cidrs(t.strings("allow_recursion", d.allow_recursion), key=t.key("allow_recursion")),
        zones=tuple(zones),
    )
    t.done()
    return cfg


def _parse_cache(t: _Table) -> CacheConfig:
    d = CacheConfig()
    cfg = CacheConfig(
        max_entries=t.get("max_entries", int, d.max_entries),
        min_ttl=t.duration("min_ttl", d.min_ttl),
        max_ttl=t.duration("max_ttl", d.max_ttl),
        serve_stale=t.duration("serve_stale", d.serve_stale),
    )
    t.done()
    return cfg


def _parse_health(t: _Table) -> HealthConfig:
    d = HealthConfig()
    cfg = HealthConfig(max_in_flight=t.get("max_in_flight", int, d.max_in_flight),
                       output_max_size=t.get("output_max_size", int, d.output_max_size))
    t.done()
    return cfg


def _parse_ui(t: _Table) -> UiConfig:
    d = UiConfig()
    cfg = UiConfig(
        topology=t.get("topology", bool, d.topology),
        topology_window=t.duration("topology_window", d.topology_window),
        topology_max_keys=t.get("topology_max_keys", int, d.topology_max_keys),
    )
    t.done()
    return cfg


ADDRESS_MODES = ("auto", "endpoints", "clusterip", "nodeport", "loadbalancer")


def _parse_kubernetes(raw: Any, index: int) -> KubernetesConfig:
    t = _Table(raw, f"kubernetes[{index}]")
    d = KubernetesConfig()
    cfg = KubernetesConfig(
        name=t.get("name", str, f"cluster{index}"),
        kubeconfig=t.get("kubeconfig", str, ""),
        context=t.get("context", str, ""),
        in_cluster=t.get("in_cluster", bool, False),
        datacenter=t.get("datacenter", str, "").lower(),
        address_mode=_choice(t.get("address_mode", str, d.address_mode), ADDRESS_MODES, key=t.key("address_mode")),
        nodeport_address=_choice(t.get("nodeport_address", str, d.nodeport_address),
                                 ("internal", "external", "external-first"), key=t.key("nodeport_address")),
        allow_namespaces=t.strings("allow_namespaces", d.allow_namespaces),
        deny_namespaces=t.strings("deny_namespaces", d.deny_namespaces),
        namespace_suffix=t.get("namespace_suffix", bool, d.namespace_suffix),
        sync_to_kubernetes=_choice(t.get("sync_to_kubernetes", str, d.sync_to_kubernetes),
                                   ("off", "externalname", "endpoints"), key=t.key("sync_to_kubernetes")),
        write_namespace=t.get("write_namespace", str, d.write_namespace),
        watch_timeout=t.duration("watch_timeout", d.watch_timeout),
        watch_idle_timeout=t.duration("watch_idle_timeout", d.watch_idle_timeout),
        request_timeout=t.duration("request_timeout", d.request_timeout),
        backoff=t.duration("backoff", d.backoff),
        max_backoff=t.duration("max_backoff", d.max_backoff),
    )
    t.done()
    return cfg


def _parse_locality(raw: Any, index: int) -> tuple[str, str]:
    """One [[locality]] table: clients in `cidr` are in `zone`."""
    t = _Table(raw, f"locality[{index}]")
    cidr = t.get("cidr", str, "")
    zone = t.get("zone", str, "").strip()
    t.done()
    if not cidr:
        raise ConfigError(f"{t.key('cidr')}: required (e.g. \"10.20.0.0/16\")")
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ConfigError(f"{t.key('cidr')}: {cidr!r} is not a CIDR (e.g. \"10.20.0.0/16\")") from None
    if not zone:
        raise ConfigError(f"{t.key('zone')}: required and must not be empty")
    return str(network), zone


def read_secret(path: str, *, key: str) -> str:
    """A token or password kept in a file (often a mounted Secret): one line, a trailing newline not part
    of it. The one reader of secret files (ACL tokens, peers' tokens, the store's password)."""
    try:
        with open(Path(path).expanduser(), encoding="utf-8") as fh:
            secret = fh.read().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
    if not secret.strip():
        raise ConfigError(f"{key}: {path} is empty")
    if "\n" in secret:
        raise ConfigError(f"{key}: {path} must hold one token on one line")
    return secret


def _peer_url(value: str, *, key: str) -> str:
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"{key}: {value!r} is not an http:// or https:// URL")
    try:
        parsed.port
    except ValueError:
        raise ConfigError(f"{key}: bad port in {value!r}") from None
    if parsed.query or parsed.fragment:
        raise ConfigError(f"{key}: {value!r} must not have a query or fragment")
    return value.rstrip("/")


def _parse_store(t: _Table) -> StoreConfig:
    d = StoreConfig()
    cfg = StoreConfig(
        backend=_choice(t.get("backend", str, d.backend), STORE_BACKENDS, key=t.key("backend")),
        endpoints=t.strings("endpoints", d.endpoints),
        prefix=t.get("prefix", str, d.prefix),
        timeout=t.duration("timeout", d.timeout),
        member_ttl=t.duration("member_ttl", d.member_ttl),
        advertise=t.get("advertise", str, d.advertise),
        ca_file=t.get("ca_file", str, ""), cert_file=t.get("cert_file", str, ""),
        key_file=t.get("key_file", str, ""), username=t.get("username", str, ""),
        password_file=t.get("password_file", str, ""),
    )
    t.done()
    return cfg


def _parse_peer(raw: Any, index: int) -> PeerConfig:
    t = _Table(raw, f"peer[{index}]")
    d = PeerConfig(datacenter="", url="")
    datacenter = t.get("datacenter", str, "").lower()
    if not _LABEL.fullmatch(datacenter):
        raise ConfigError(f"{t.key('datacenter')}: required, one DNS label (got {datacenter!r})")
    url = t.get("url", str, "")
    if not url:
        raise ConfigError(f"{t.key('url')}: required")
    token_file = t.get("token_file", str, "")
    services = t.strings("services", d.services)
    if not services or not all(services):
        raise ConfigError(f"{t.key('services')}: expected non-empty globs such as \"*\" or \"billing-*\"")
    cfg = PeerConfig(
        datacenter=datacenter,
        url=_peer_url(url, key=t.key("url")),
        token_file=token_file,
        token=read_secret(token_file, key=t.key("token_file")) if token_file else "",
        services=tuple(s.lower() for s in services),
        wait=t.duration("wait", d.wait),
        timeout=t.duration("timeout", d.timeout),
        backoff=t.duration("backoff", d.backoff),
        max_backoff=t.duration("max_backoff", d.max_backoff),
        sync_concurrency=t.get("sync_concurrency", int, d.sync_concurrency),
    )
    t.done()
    return cfg


def parse_config(data: Mapping[str, Any]) -> Config:
    """TOML data -> Config: types and shapes here, values in `validate` (which the flags go through too)."""
    t = _Table(data, "")
    d = Config()
    cfg = Config(
        domain=normalize_domain(t.get("domain", str, d.domain), key="domain"),
        alt_domain=normalize_domain(t.get("alt_domain", str, ""), key="alt_domain"),
        datacenter=t.get("datacenter", str, d.datacenter).lower(),
        data_dir=t.get("data_dir", str, d.data_dir),
        zones=t.get("zones", str, d.zones),
        zones_poll_interval=t.duration("zones_poll_interval", d.zones_poll_interval),
        log_level=_choice(t.get("log_level", str, d.log_level).lower(), LOG_LEVELS, key="log_level"),
        dns=_parse_dns(t.sub("dns")),
        http=_parse_http(t.sub("http")),
        acl_tokens=_parse_acl(t.sub("acl")),
        forwarding=_parse_forwarding(t.sub("forwarding")),
        cache=_parse_cache(t.sub("cache")),
        kubernetes=tuple(_parse_kubernetes(raw, i) for i, raw in enumerate(t.get("kubernetes", list, []))),
        health=_parse_health(t.sub("health")),
        ui=_parse_ui(t.sub("ui")),
        localities=tuple(_parse_locality(raw, i) for i, raw in enumerate(t.get("locality", list, []))),
        peers=tuple(_parse_peer(raw, i) for i, raw in enumerate(t.get("peer", list, []))),
        store=_parse_store(t.sub("store")),
        node_name=t.get("node_name", str, ""),
    )
    t.done()
    return validate(cfg)


LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_TTL = 2**31 - 1   # RFC 2181 section 8


class _Rules:
    """Value checks over a whole Config. A value given on the command line is named by its flag."""

    def __init__(self, flags: Mapping[str, str]):
        self.flags = flags

    def fail(self, key: str, problem: str) -> None:
        raise ConfigError(f"{self.flags.get(key, key)}: {problem}")

    def at_least(self, key: str, value: float, low: float) -> None:
        if value < low:
            self.fail(key, f"must be at least {_num(low)} (got {_num(value)})")

    def positive(self, key: str, value: float) -> None:
        if value <= 0:
            self.fail(key, "must be more than 0")

    def within(self, key: str, value: float, low: float, high: float, what: str = "") -> None:
        if not low <= value <= high:
            self.fail(key, f"must be between {_num(low)} and {_num(high)}{what} (got {_num(value)})")

    def ttl(self, key: str, seconds: float) -> None:
        self.within(key, seconds, 0, MAX_TTL, " seconds")


def _num(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"


def validate(cfg: Config, *, flags: Mapping[str, str] | None = None) -> Config:
    """Every value in range and every combination consistent; `flags` maps keys to the flags that set them."""
    r = _Rules(flags or {})
    if not cfg.domain:
        r.fail("domain", "must not be empty")
    if cfg.alt_domain == cfg.domain:
        r.fail("alt_domain", f"is the same as domain ({cfg.domain})")
    if not _LABEL.fullmatch(cfg.datacenter):
        r.fail("datacenter", f"{cfg.datacenter!r} is not a DNS label")
    for key in ("data_dir", "zones"):
        if not getattr(cfg, key):
            r.fail(key, "must not be empty")
    r.positive("zones_poll_interval", cfg.zones_poll_interval)
    if cfg.log_level not in LOG_LEVELS:
        r.fail("log_level", f"{cfg.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    _check_dns(r, cfg.dns)
    _check_http(r, cfg)
    _check_forwarding(r, cfg)
    _check_cache(r, cfg.cache)
    _check_kubernetes(r, cfg)
    _check_peers(r, cfg)
    _check_store(r, cfg)
    r.at_least("health.max_in_flight", cfg.health.max_in_flight, 1)
    r.at_least("health.output_max_size", cfg.health.output_max_size, 1)
    window = cfg.ui.topology_window
    if window % 60 or not 60 <= window <= 3600:
        r.fail("ui.topology_window", "a whole number of minutes from 1m to 60m")
    r.at_least("ui.topology_max_keys", cfg.ui.topology_max_keys, 1)
    return cfg


def _check_dns(r: _Rules, dns: DnsConfig) -> None:
    r.at_least("dns.same_zone_min", dns.same_zone_min, 1)
    r.at_least("dns.a_record_limit", dns.a_record_limit, 0)
    r.within("dns.udp_payload", dns.udp_payload, 512, 65535)
    r.positive("dns.tcp_idle_timeout", dns.tcp_idle_timeout)
    r.at_least("dns.tcp_max_connections", dns.tcp_max_connections, 1)
    r.at_least("dns.workers", dns.workers, 1)
    r.at_least("dns.rrl_responses_per_second", dns.rrl_responses_per_second, 0)
    r.at_least("dns.reply_cache_mb", dns.reply_cache_mb, 0)
    r.at_least("dns.max_client_classes", dns.max_client_classes, 1)
    r.at_least("dns.max_plans", dns.max_plans, 0)
    if dns.busy_poll > 0.01:
        r.fail("dns.busy_poll", "at most 10ms (it holds the event loop while it polls)")
    r.ttl("dns.node_ttl", dns.node_ttl)
    for pattern, seconds in dns.service_ttl:
        if "*" in pattern[:-1]:
            r.fail(f"dns.service_ttl.{pattern}", "only a trailing * is supported (\"web*\", \"*\")")
        r.ttl(f"dns.service_ttl.{pattern}", seconds)
    for name in ("min_ttl", "refresh", "retry", "expire"):
        r.ttl(f"dns.soa.{name}", getattr(dns.soa, name))


def _check_http(r: _Rules, cfg: Config) -> None:
    http = cfg.http
    r.at_least("http.max_body", http.max_body, 1)
    r.at_least("http.max_blocking_queries", http.max_blocking_queries, 1)
    r.positive("http.idle_timeout", http.idle_timeout)
    r.positive("http.max_wait", http.max_wait)
    if http.tls_key and not http.tls_cert:
        r.fail("http.tls_cert", "required when http.tls_key is set (--http-tls-cert)")
    host = http.listen[0]
    if not (cfg.acl_tokens or http.insecure or _loopback(host)):
        r.fail("http.listen", f"{host} is not a loopback address and no [[acl.tokens]] are configured; anyone "
               "who can reach it could change the catalog. Configure ACL tokens, listen on 127.0.0.1, or pass "
               "--http-insecure")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_forwarding(r: _Rules, cfg: Config) -> None:
    r.positive("forwarding.timeout", cfg.forwarding.timeout)
    seen: set[str] = set()
    for i, zone in enumerate(cfg.forwarding.zones):
        key = f"forwarding.zone[{i}].name"
        ours = next((d for d in cfg.domains if zone.name == d or zone.name.endswith("." + d)), None)
        if ours is not None:
            r.fail(key, f"{zone.name!r} is inside our own domain {ours!r}, which meshdns answers itself and "
                   "never forwards")
        if zone.name in seen:
            r.fail(key, f"{zone.name!r} has two rules")
        seen.add(zone.name)


def _check_cache(r: _Rules, cache: CacheConfig) -> None:
    r.at_least("cache.max_entries", cache.max_entries, 0)
    r.ttl("cache.max_ttl", cache.max_ttl)
    if cache.min_ttl > cache.max_ttl:
        r.fail("cache.min_ttl", f"must not be more than cache.max_ttl ({cache.min_ttl:g}s > {cache.max_ttl:g}s)")


def _check_peers(r: _Rules, cfg: Config) -> None:
    """A peer is another datacenter: never ours, and each one once."""
    seen: set[str] = set()
    for i, peer in enumerate(cfg.peers):
        key = f"peer[{i}]"
        if peer.datacenter == cfg.datacenter:
            r.fail(f"{key}.datacenter", f"{peer.datacenter!r} is our own datacenter (a peer must be another one)")
        if peer.datacenter in seen:
            r.fail(f"{key}.datacenter", f"{peer.datacenter!r} names two peers")
        seen.add(peer.datacenter)
        if not 1 <= peer.wait <= 600:
            r.fail(f"{key}.wait", "between 1s and 10m (a peer caps blocking waits at 10m)")
        r.positive(f"{key}.timeout", peer.timeout)
        r.positive(f"{key}.backoff", peer.backoff)
        if peer.max_backoff < peer.backoff:
            r.fail(f"{key}.max_backoff", "must not be less than backoff")
        r.at_least(f"{key}.sync_concurrency", peer.sync_concurrency, 1)


_NODE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def endpoint_problem(value: str) -> str | None:
    """What is wrong with an etcd client URL (http(s)://host:port; a bare host:port means http), or None."""
    from urllib.parse import urlsplit
    url = urlsplit(value if "://" in value else f"http://{value}")
    try:
        port = url.port
    except ValueError:
        port = None
    if url.scheme not in ("http", "https") or not url.hostname or port is None:
        return f"{value!r} is not http(s)://host:port"
    return None


def _check_store(r: _Rules, cfg: Config) -> None:
    store = cfg.store
    if cfg.node_name and not _NODE_NAME.fullmatch(cfg.node_name):
        r.fail("node_name", f"{cfg.node_name!r} is not a node name (letters, digits and '-', up to 63)")
    if not store.endpoints:
        r.fail("store.endpoints", "at least one etcd endpoint is needed")
    for endpoint in store.endpoints:
        problem = endpoint_problem(endpoint)
        if problem:
            r.fail("store.endpoints", problem)
    if len({e.split("://")[0] if "://" in e else "http" for e in store.endpoints}) > 1:
        r.fail("store.endpoints", "a mix of http:// and https:// endpoints")
    if not (store.prefix.startswith("/") and store.prefix.endswith("/") and len(store.prefix) > 1):
        r.fail("store.prefix", f"{store.prefix!r} must start and end with '/' (e.g. \"/meshdns/\")")
    r.positive("store.timeout", store.timeout)
    if store.member_ttl != int(store.member_ttl) or store.member_ttl < 1:
        r.fail("store.member_ttl", f"a whole number of seconds, at least 1s (got {_num(store.member_ttl)}s)")
    if store.advertise:
        try:
            parse_hostport(store.advertise, key="store.advertise", default_port=8500)
        except ConfigError as exc:
            r.fail("store.advertise", str(exc).split(": ", 1)[-1])
    if bool(store.cert_file) != bool(store.key_file):
        r.fail("store.cert_file", "give cert_file and key_file together")
    if store.password_file and not store.username:
        r.fail("store.username", "required with password_file")
    if store.username and not store.password_file:
        r.fail("store.password_file", "required with username")


def _check_kubernetes(r: _Rules, cfg: Config) -> None:
    names: set[str] = set()
    for i, kc in enumerate(cfg.kubernetes):
        key = f"kubernetes[{i}]"
        if not kc.name:
            r.fail(f"{key}.name", "must not be empty")
        if kc.name in names:
            r.fail(f"{key}.name", f"{kc.name!r} names two clusters (each needs its own name)")
        names.add(kc.name)
        if kc.datacenter and not _LABEL.fullmatch(kc.datacenter):
            r.fail(f"{key}.datacenter", f"{kc.datacenter!r} is not a DNS label")
        if kc.in_cluster and kc.kubeconfig:
            r.fail(f"{key}.in_cluster", "give in_cluster = true or a kubeconfig, not both")
        if kc.sync_to_kubernetes != "off" and not kc.write_namespace:
            r.fail(f"{key}.write_namespace", "required when sync_to_kubernetes is on")
        for name in ("watch_timeout", "watch_idle_timeout", "request_timeout", "backoff"):
            r.positive(f"{key}.{name}", getattr(kc, name))
        if kc.max_backoff < kc.backoff:
            r.fail(f"{key}.max_backoff", f"must not be less than backoff ({kc.max_backoff:g}s < {kc.backoff:g}s)")


def load_config(path: str | Path | None) -> Config:
    if path is None:
        return Config()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_secret_files(cfg: Config) -> Config:
    """The config with each token's `secret_file` read (at start-up, not at parse time: the file is often a
    mounted Secret that only the running server can see). A trailing newline is not part of the secret."""
    tokens = []
    for i, token in enumerate(cfg.acl_tokens):
        if token.secret_file:
            secret = read_secret(token.secret_file, key=f"acl.tokens[{i}].secret_file")
            token = replace(token, secret=secret)
        tokens.append(token)
    return replace(cfg, acl_tokens=tuple(tokens))


FLAGS = {"data_dir": "--data-dir", "zones": "--zones", "log_level": "--log-level", "domain": "--domain",
         "alt_domain": "--alt-domain", "datacenter": "--datacenter", "dns.listen": "--dns", "dns.workers": "--workers",
         "http.listen": "--http", "http.insecure": "--http-insecure", "http.tls_cert": "--http-tls-cert",
         "http.tls_key": "--http-tls-key", "forwarding.recursors": "--recursor",
         "kubernetes[0].kubeconfig": "--kubeconfig", "kubernetes[0].context": "--kube-context",
         "store.backend": "--store-backend", "store.endpoints": "--store-endpoints",
         "store.advertise": "--advertise"}


def with_overrides(cfg: Config, **flags: Any) -> Config:
    """Apply command-line flags (None = not given) on top of the file; they pass the file's checks."""
    given = {key: flag for key, flag in FLAGS.items() if flags.get(flag[2:].replace("-", "_")) is not None}
    top: dict[str, Any] = {}
    for name in ("data_dir", "zones", "log_level"):
        if flags.get(name) is not None:
            top[name] = flags[name]
    for name in ("domain", "alt_domain"):
        if flags.get(name) is not None:
            top[name] = normalize_domain(flags[name], key=FLAGS[name])
    if flags.get("datacenter") is not None:
        top["datacenter"] = flags["datacenter"].lower()
    dns, http, fwd = cfg.dns, cfg.http, cfg.forwarding
    if flags.get("dns") is not None:
        dns = replace(dns, listen=parse_hostport(flags["dns"], key="--dns", default_port=8600))
    if flags.get("workers") is not None:
        dns = replace(dns, workers=flags["workers"])
    if flags.get("http") is not None:
        http = replace(http, listen=parse_hostport(flags["http"], key="--http", default_port=8500))
    if flags.get("http_insecure"):
        http = replace(http, insecure=True)
    if flags.get("http_tls_cert") is not None:
        http = replace(http, tls_cert=flags["http_tls_cert"])
    if flags.get("http_tls_key") is not None:
        http = replace(http, tls_key=flags["http_tls_key"])
    if flags.get("recursor"):
        fwd = replace(fwd, recursors=_servers(tuple(flags["recursor"]), key="--recursor"))
    store = cfg.store
    if flags.get("store_backend") is not None:
        store = replace(store, backend=_choice(flags["store_backend"], STORE_BACKENDS, key="--store-backend"))
    if flags.get("store_endpoints") is not None:
        store = replace(store, endpoints=tuple(e.strip() for e in flags["store_endpoints"].split(",") if e.strip()))
    if flags.get("advertise") is not None:
        store = replace(store, advertise=flags["advertise"])
    top["store"] = store
    kube = cfg.kubernetes
    if flags.get("kubeconfig") is not None or flags.get("kube_context") is not None:
        base = kube[0] if kube else KubernetesConfig(name="default")
        base = replace(base, kubeconfig=flags.get("kubeconfig") or base.kubeconfig,
                       context=flags.get("kube_context") or base.context)
        kube = (base,) + kube[1:]
    return validate(replace(cfg, dns=dns, http=http, forwarding=fwd, kubernetes=kube, **top), flags=given)
