"""Probes: one HTTP request or one TCP connect -> (Health, output).

Mapping as in Consul: 2xx passing, 429 warning, anything else (including
connection errors and timeouts) critical. Connections are not reused, so each
probe really tests that the service accepts connections.
"""
from __future__ import annotations

import asyncio

import aiohttp

from ..catalog.model import Health
from .spec import CheckSpec

USER_AGENT = "meshdns health check"


def http_status_health(status: int) -> Health:
    if 200 <= status < 300:
        return Health.PASSING
    if status == 429:
        return Health.WARNING
    return Health.CRITICAL


def new_session(*, limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, force_close=True)
    return aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False)


async def probe_http(session: aiohttp.ClientSession, spec: CheckSpec, *, max_output: int) -> tuple[Health, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "text/plain, text/*, */*"}
    for name, value in spec.headers:
        headers[name] = value
    where = f"HTTP {spec.method} {spec.target}"
    try:
        async with session.request(spec.method, spec.target, headers=headers,
                                   ssl=False if spec.tls_skip_verify else True,
                                   data=spec.body.encode() if spec.body else None,
                                   allow_redirects=not spec.disable_redirects,
                                   timeout=aiohttp.ClientTimeout(total=spec.timeout)) as resp:
            body = await resp.content.read(max_output)
            text = body.decode("utf-8", "replace")
            return http_status_health(resp.status), f"{where}: {resp.status} {resp.reason} Output: {text}"
    except asyncio.TimeoutError:
        return Health.CRITICAL, f"{where}: timed out after {spec.timeout:g}s"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return Health.CRITICAL, f"{where}: {exc or type(exc).__name__}"


async def probe_tcp(spec: CheckSpec) -> tuple[Health, str]:
    host, _, port = spec.target.rpartition(":")
    host = host.strip("[]")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), spec.timeout)
    except asyncio.TimeoutError:
        return Health.CRITICAL, f"TCP connect {spec.target}: timed out after {spec.timeout:g}s"
    except OSError as exc:
        return Health.CRITICAL, f"TCP connect {spec.target}: {exc.strerror or exc}"
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return Health.PASSING, f"TCP connect {spec.target}: Success"
