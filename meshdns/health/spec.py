"""Check definitions in Consul's shape, parsed once for zone files and the API."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..catalog.model import Health
from ..catalog.validate import FieldError
from ..config import ConfigError, parse_duration


@dataclass(frozen=True, slots=True)
class CheckSpec:
    kind: str                      # http | tcp | ttl
    target: str = ""               # URL for http, host:port for tcp
    interval: float = 10.0
    timeout: float = 10.0
    ttl: float = 0.0
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    tls_skip_verify: bool = False
    success_before_passing: int = 0
    failures_before_critical: int = 0
    deregister_critical_after: float = 0.0
    initial: Health = Health.CRITICAL
    name: str = ""
    notes: str = ""
    body: str = ""                 # HTTP request body
    disable_redirects: bool = False


def get_field(d: Mapping[str, Any], *names: str) -> Any:
    """Consul accepts CamelCase and snake_case (and any case) for the same key."""
    lowered = {str(k).lower().replace("_", ""): v for k, v in d.items()}
    for n in names:
        v = lowered.get(n.lower().replace("_", ""))
        if v is not None:
            return v
    return None


_get = get_field


def _duration(d: Mapping[str, Any], key: str, field: str, default: float) -> float:
    raw = _get(d, key)
    if raw is None or raw == "":
        return default
    try:
        return parse_duration(raw, key=f"{field}.{key}")
    except ConfigError as exc:
        raise FieldError(f"{field}.{key}", str(exc).split(": ", 1)[-1]) from None


def _count(d: Mapping[str, Any], key: str, field: str) -> int:
    v = _get(d, key)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise FieldError(f"{field}.{key}", f"{v!r} is not a non-negative integer")
    return v


def _text(d: Mapping[str, Any], key: str, field: str) -> str:
    v = _get(d, key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise FieldError(f"{field}.{key}", "expected a string")
    return v


def parse_check(d: Any, field: str = "Check") -> CheckSpec:
    if not isinstance(d, Mapping):
        raise FieldError(field, "expected an object")
    http, tcp, ttl = _get(d, "HTTP"), _get(d, "TCP"), _get(d, "TTL")
    kinds = [k for k, v in (("http", http), ("tcp", tcp), ("ttl", ttl)) if v not in (None, "")]
    unsupported = [k for k in ("Script", "Args", "GRPC", "DockerContainerID", "H2PING", "UDP", "OSService")
                   if _get(d, k) not in (None, "", [])]
    if unsupported:
        raise FieldError(f"{field}.{unsupported[0]}", "check type not supported (use HTTP, TCP or TTL)")
    if len(kinds) != 1:
        raise FieldError(field, "exactly one of HTTP, TCP or TTL is required")
    kind = kinds[0]
    status = _get(d, "Status")
    initial = Health.CRITICAL
    if status not in (None, ""):
        try:
            initial = Health.parse(str(status))
        except ValueError as exc:
            raise FieldError(f"{field}.Status", str(exc)) from None
        if initial is Health.MAINTENANCE:
            raise FieldError(f"{field}.Status", "must be passing, warning or critical")
    headers: list[tuple[str, str]] = []
    raw_headers = _get(d, "Header")
    if raw_headers is not None:
        if not isinstance(raw_headers, Mapping):
            raise FieldError(f"{field}.Header", "expected an object of lists of strings")
        for k, vs in raw_headers.items():
            vs = vs if isinstance(vs, list) else [vs]
            if not all(isinstance(v, str) for v in vs):
                raise FieldError(f"{field}.Header.{k}", "expected strings")
            headers.extend((str(k), v) for v in vs)
    target = ""
    if kind == "http":
        if not isinstance(http, str) or not http.startswith(("http://", "https://")):
            raise FieldError(f"{field}.HTTP", f"{http!r} is not an http(s) URL")
        target = http
    elif kind == "tcp":
        if not isinstance(tcp, str) or ":" not in tcp:
            raise FieldError(f"{field}.TCP", f"{tcp!r} is not host:port")
        host, _, p = tcp.rpartition(":")
        if not p.isdigit() or not 0 < int(p) < 65536 or not host:
            raise FieldError(f"{field}.TCP", f"{tcp!r} is not host:port")
        target = tcp
    method = _get(d, "Method") or "GET"
    if not isinstance(method, str) or not method.isalpha():
        raise FieldError(f"{field}.Method", f"{method!r} is not an HTTP method")
    spec = CheckSpec(
        kind=kind,
        target=target,
        interval=_duration(d, "Interval", field, 10.0),
        timeout=_duration(d, "Timeout", field, 10.0),
        ttl=_duration(d, "TTL", field, 0.0) if kind == "ttl" else 0.0,
        method=method.upper(),
        headers=tuple(headers),
        tls_skip_verify=bool(_get(d, "TLSSkipVerify") or False),
        success_before_passing=_count(d, "SuccessBeforePassing", field),
        failures_before_critical=_count(d, "FailuresBeforeCritical", field),
        deregister_critical_after=_duration(d, "DeregisterCriticalServiceAfter", field, 0.0),
        initial=initial,
        name=str(_get(d, "Name") or ""),
        notes=str(_get(d, "Notes") or ""),
        body=_text(d, "Body", field),
        disable_redirects=bool(_get(d, "DisableRedirects") or False),
    )
    if kind in ("http", "tcp") and spec.interval <= 0:
        raise FieldError(f"{field}.Interval", "required for HTTP and TCP checks and must be positive")
    if kind == "ttl" and spec.ttl <= 0:
        raise FieldError(f"{field}.TTL", "must be positive")
    return spec
