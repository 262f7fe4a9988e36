"""What ships in Dockerfile and deploy/: linted, schema-checked, consistent, and working.

No image is built and no cluster is needed: the Dockerfile goes through hadolint,
the manifests through the Kubernetes schemas (kubernetes-validate), the systemd
units through `systemd-analyze verify` where it exists, the register script
through shellcheck and a run against an API on loopback, and every meshdns
config that ships is parsed by meshdns itself.
"""
from __future__ import annotations

import configparser
import fnmatch
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.resolver
import pytest
import yaml

from harness import ROOT, ServerThread, make_config
from meshdns.config import Config, parse_config

DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
VM = DEPLOY / "vm"
COREDNS = DEPLOY / "coredns"


def tool(name: str) -> str:
    """A linter from the `test` extra (pip install -e '.[test]')."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def load_toml(text: str) -> Config:
    return parse_config(tomllib.loads(text))


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


# -- Dockerfile ----------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            instr, _, args = line.partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    instrs = dockerfile()
    last_from = max(i for i, (instr, _) in enumerate(instrs) if instr == "FROM")
    return instrs[last_from:]


def image_config() -> Config:
    return load_toml((DEPLOY / "docker" / "meshdns.toml").read_text())


def test_dockerfile_passes_hadolint():
    out = subprocess.run([tool("hadolint"), "--no-color", "Dockerfile"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_image_is_multi_stage_slim_and_runs_meshdns_as_non_root():
    instrs = dockerfile()
    froms = [args for instr, args in instrs if instr == "FROM"]
    assert len(froms) == 2 and all(f.split()[0] == "python:3.11-slim" for f in froms)
    final = final_stage()
    # Only the runtime reaches the final image: no source tree, no wheel file left behind.
    copies = [args for instr, args in final if instr == "COPY"]
    assert not any(c.startswith("--from") or "meshdns " in c + " " for c in copies)
    runs = " ".join(args for instr, args in final if instr == "RUN")
    assert "--mount=type=bind,from=build" in runs and "--no-index" in runs
    user = [args for instr, args in final if instr == "USER"][-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, "numeric non-root USER (Kubernetes runAsNonRoot needs a number)"
    entrypoint = json.loads([args for instr, args in final if instr == "ENTRYPOINT"][-1])
    cmd = json.loads([args for instr, args in final if instr == "CMD"][-1])
    assert entrypoint == ["meshdns", "serve"]
    config_path = cmd[cmd.index("--config") + 1]
    assert f"deploy/docker/meshdns.toml {config_path}" in copies
    volume = json.loads([args for instr, args in final if instr == "VOLUME"][-1])
    assert volume == [image_config().data_dir]
    assert f"zones {image_config().zones}" in copies


def test_image_listens_on_8600_and_keeps_the_unauthenticated_api_on_loopback():
    cfg = image_config()
    assert cfg.dns.listen == ("0.0.0.0", 8600)
    assert cfg.http.listen[1] == 8500
    # meshdns refuses a non-loopback API without tokens; the image must start as shipped.
    assert is_loopback(cfg.http.listen[0]) and not cfg.acl_tokens and not cfg.http.insecure
    exposed = set(" ".join(args for instr, args in final_stage() if instr == "EXPOSE").split())
    assert exposed == {"8600/udp", "8600/tcp", "8500/tcp"}


def healthcheck() -> tuple[list[str], str]:
    """The HEALTHCHECK command (exec form) and the URL it checks by default."""
    args = [a for instr, a in final_stage() if instr == "HEALTHCHECK"][-1]
    command = json.loads(args[args.index("CMD") + 3:].strip())
    env = " ".join(a for instr, a in final_stage() if instr == "ENV")
    url = re.search(r"HEALTHCHECK_URL=(\S+)", env).group(1)
    return command, url


def test_healthcheck_targets_healthz_on_the_api_address():
    command, url = healthcheck()
    assert command[0] == "python" and "urlopen" in command[-1]
    host, port = image_config().http.listen
    assert url == f"http://{host}:{port}/healthz"


class _StatusServer:
    """Answers every GET with a fixed status: stands in for /healthz."""

    def __init__(self, status: int):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(status)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/healthz"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("status,healthy", [(200, True), (503, False), (None, False)])
def test_healthcheck_command_fails_unless_healthz_answers_2xx(status, healthy):
    command, _ = healthcheck()
    if status is None:  # nothing listening
        stub = _StatusServer(200)
        stub.close()
    else:
        stub = _StatusServer(status)
    try:
        out = subprocess.run([sys.executable, *command[1:]], env={**os.environ, "HEALTHCHECK_URL": stub.url},
                             capture_output=True, timeout=30)
    finally:
        if status is not None:
            stub.close()
    assert (out.returncode == 0) is healthy


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.replace("**/", "*/") if pattern.startswith("**/") else pattern
        if any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.removeprefix("*/"))
               for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_else():
    sources = []
    for instr, args in dockerfile():
        if instr == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    assert sources
    for source in sources:
        files = [source] if (ROOT / source).is_file() else [
            str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts]
        assert files, source
        for f in files:
            assert not dockerignore_excludes(f), f"{f} is copied but excluded by .dockerignore"
    for f in (".git/HEAD", ".meshdns/registrations.db", "tests/test_deploy.py",
              "meshdns/__pycache__/app.cpython-311.pyc", "deploy/kubernetes/deployment.yaml"):
        assert dockerignore_excludes(f), f
