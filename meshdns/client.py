"""`meshdns register FILE.json` / `meshdns deregister ID`: for VM boot and shutdown scripts.

The file is what `consul services register` takes: {"Service": {...}},
{"Services": [...]} or a bare service definition. It is sent as is; the server
validates it. When the file gives no Address, the address this machine uses to
reach meshdns is filled in, so the ID printed here is the one to deregister.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import ssl
import sys
from typing import Any
from urllib.parse import quote, urlsplit

from .catalog.validate import FieldError, client_ip
from .health.spec import get_field
from .sources.registration_model import parse_service

DEFAULT_ADDR = "127.0.0.1:8500"


class ClientError(Exception):
    pass


def add_parsers(sub) -> None:
    for name, help_text, arg_help in (
            ("register", "register services from a Consul service-definition JSON file", "JSON file"),
            ("deregister", "deregister services by ID (or the IDs in a JSON file)", "service ID or JSON file")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("target", metavar="ID" if name == "deregister" else "FILE", help=arg_help)
        p.add_argument("--http-addr", default=os.environ.get("MESHDNS_HTTP_ADDR")
                       or os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDR,
                       help="meshdns HTTP API, [http[s]://]host:port (env MESHDNS_HTTP_ADDR; default 127.0.0.1:8500)")
        p.add_argument("--token", default=os.environ.get("MESHDNS_HTTP_TOKEN") or os.environ.get("CONSUL_HTTP_TOKEN"),
                       help="ACL token (env MESHDNS_HTTP_TOKEN)")
        p.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate")


class Api:
    def __init__(self, addr: str, token: str | None, *, insecure: bool = False, timeout: float = 10.0):
        if "://" not in addr:
            addr = "http://" + addr
        url = urlsplit(addr)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ClientError(f"--http-addr: cannot use {addr!r}")
        self.https = url.scheme == "https"
        self.host, self.port = url.hostname, url.port or (443 if self.https else 8500)
        self.token, self.insecure, self.timeout = token, insecure, timeout

    def put(self, path: str, body: Any = None) -> bytes:
        if self.https:
            context = ssl._create_unverified_context() if self.insecure else ssl.create_default_context()
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["X-Consul-Token"] = self.token
        try:
            data = json.dumps(body).encode() if body is not None else b""
            conn.request("PUT", path, body=data, headers=headers)
            resp = conn.getresponse()
            text = resp.read()
        except OSError as exc:
            raise ClientError(f"cannot reach meshdns at {self.host}:{self.port}: {exc}") from None
        finally:
            conn.close()
        if resp.status != 200:
            raise ClientError(f"{resp.status} {resp.reason}: {text.decode(errors='replace').strip()}")
        return text

    def connect_address(self) -> str:
        """The local address used to reach the server (what the server sees as our address)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as s:
                return client_ip(s.getsockname()[0])
        except OSError as exc:
            raise ClientError(f"cannot reach meshdns at {self.host}:{self.port}: {exc}") from None


def services_in(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ClientError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ClientError(f"{path}: invalid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(get_field(data, "Services"), list):
        found = get_field(data, "Services")
    elif isinstance(data, dict) and isinstance(get_field(data, "Service"), dict):
        found = [get_field(data, "Service")]
    else:
        found = [data]
    if not found or not all(isinstance(s, dict) for s in found):
        raise ClientError(f"{path}: expected a service definition object")
    return found


def service_id(svc: dict, local_address: str) -> str:
    """The ID the server gives it: the server's own parser decides (explicit ID, else <name>-<address>,
    with the address written the way the server stores it)."""
    try:
        return parse_service(svc, field="", datacenter="", node="", default_address=local_address,
                             default_id=True).id
    except FieldError as exc:
        raise ClientError(f"invalid service definition: {exc}") from None


def register(args: argparse.Namespace) -> int:
    api = Api(args.http_addr, args.token, insecure=args.insecure)
    services = services_in(args.target)
    for svc in services:
        if not get_field(svc, "Address"):
            svc = {**svc, "Address": api.connect_address()}
        api.put("/v1/agent/service/register", svc)
        print(f"Registered service: {get_field(svc, 'Name')} (ID {service_id(svc, '')})")
    return 0


def deregister(args: argparse.Namespace) -> int:
    api = Api(args.http_addr, args.token, insecure=args.insecure)
    if args.target.endswith(".json") and os.path.isfile(args.target):
        local = ""
        ids = []
        for svc in services_in(args.target):
            if not get_field(svc, "ID") and not get_field(svc, "Address") and not local:
                local = api.connect_address()
            ids.append(service_id(svc, local))
    else:
        ids = [args.target]
    for sid in ids:
        api.put(f"/v1/agent/service/deregister/{quote(sid, safe='')}")
        print(f"Deregistered service: {sid}")
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        return register(args) if args.command == "register" else deregister(args)
    except ClientError as exc:
        print(f"meshdns {args.command}: {exc}", file=sys.stderr)
        return 1
