"""Tokens from the config file: who may write which service names, and who may read.

A token comes in `X-Consul-Token` or `Authorization: Bearer`. Secrets are
compared in constant time and never appear in a message or a log line.
"""
from __future__ import annotations

import hmac
from typing import Iterable

from aiohttp import web

from ..config import AclToken


class Denied(Exception):
    """403: the request's token (or its absence) does not allow this."""


def presented_token(request: web.Request) -> str | None:
    token = request.headers.get("X-Consul-Token")
    if token:
        return token.strip()
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class Acl:
    def __init__(self, tokens: tuple[AclToken, ...], *, anonymous_read: bool):
        self.tokens = tokens
        self.anonymous_read = anonymous_read

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def _lookup(self, request: web.Request) -> AclToken | None:
        secret = presented_token(request)
        if secret is None:
            return None
        found = None
        for token in self.tokens:  # no early exit: the time taken does not depend on which token matched
            if hmac.compare_digest(token.secret.encode(), secret.encode()):
                found = token
        if found is None:
            raise Denied("ACL not found: the token is not known")
        return found

    def require_read(self, request: web.Request) -> None:
        if not self.enabled:
            return
        token = self._lookup(request)
        if token is None:
            if self.anonymous_read:
                return
            raise Denied("Permission denied: a token is required to read")
        if not (token.read or token.management):
            raise Denied("Permission denied: this token may not read")

    def require_token(self, request: web.Request) -> AclToken | None:
        """Any write needs a known token; called before the body is even looked at."""
        if not self.enabled:
            return None
        token = self._lookup(request)
        if token is None:
            raise Denied("Permission denied: a token is required (X-Consul-Token or Authorization: Bearer)")
        return token

    def require_service_write(self, request: web.Request, names: Iterable[str]) -> None:
        token = self.require_token(request)
        if token is None or token.management:
            return
        for name in names:
            if not any(name.lower().startswith(prefix.lower()) for prefix in token.write):
                raise Denied(f"Permission denied: token lacks service:write on {name!r}")

    def require_node_write(self, request: web.Request) -> None:
        """Node-level writes (a node, node checks): management, or write on every name ("")."""
        token = self.require_token(request)
        if token is None or token.management or "" in token.write:
            return
        raise Denied("Permission denied: node-level writes need a management token")
