"""CoreDNS itself in front of real `meshdns serve` processes, as every cluster reaches meshdns.

The binary is CoreDNS's coremain with the forward, cache, errors, log, bind and
prometheus plugins (tests/coredns, built once by tests/coredns/build.sh). Its
Corefile is deploy/coredns/Corefile.consul with the ClusterIP replaced by
meshdns's loopback ports and `consul:53` by a free port bound to 127.0.0.1.
"""
from __future__ import annotations

import math
import re
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from harness import ROOT, ServerProcess, dig, free_port, metric_samples, wait_until

BUILD = ROOT / "tests" / "coredns" / "build.sh"
SHIPPED = ROOT / "deploy" / "coredns" / "Corefile.consul"

LEGACY = ["192.168.28.213", "192.168.28.214"]     # legacy-billing on two VMs
PODS = ["10.244.1.11", "10.244.2.12"]             # billing, tagged v2
BIG = 300                                         # instances of `big`: far past one UDP answer
SEED = 20240611

ZONES = """\
[[node]]
name = "billing-vm-1"
address = "192.168.28.213"

[[node]]
name = "billing-vm-2"
address = "192.168.28.214"

[[service]]
name = "legacy-billing"
node = "billing-vm-1"
port = 8080

[[service]]
name = "legacy-billing"
node = "billing-vm-2"
port = 8080

[[service]]
name = "billing"
address = "10.244.1.11"
port = 8080
tags = ["v2"]

[[service]]
name = "billing"
address = "10.244.2.12"
port = 8080
tags = ["v2"]

[[split]]
name = "billing"
targets = [ { service = "legacy-billing", weight = 90 },
            { service = "billing", tag = "v2", weight = 10 } ]
"""


@pytest.fixture(scope="session")
def coredns_binary() -> str:
    """Build (or find in the cache) the test CoreDNS; skip, with the build's reason, when it cannot be had."""
    done = subprocess.run(["sh", str(BUILD)], capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        pytest.fail(f"{BUILD} failed:\n{done.stderr}")
    path = done.stdout.strip()
    if not path:
        pytest.skip(done.stderr.strip() or "CoreDNS was not built")
    return path


def corefile(port: int, metrics_port: int, upstreams: list[int], *, cache: str | None = None,
             forward_options: tuple[str, ...] = ()) -> str:
    """deploy/coredns/Corefile.consul on loopback.

    cache: None keeps the shipped block (no cache); "shipped" uncomments the
    block's own `cache 5 { success 9984 5 0 ... }`; any other text is put in
    as a line (e.g. "cache 30", as in Kubernetes' default `.:53` block)."""
    text = SHIPPED.read_text()
    header, forward = "consul:53 {", "forward . 10.96.0.53"
    assert text.count(header) == 1 and text.count(forward) == 1, f"{SHIPPED} changed shape"
    if cache == "shipped":
        text, n = re.subn(r"^(\s*)#   ", r"\1", text, flags=re.M)
        assert n == 4, f"the commented cache block in {SHIPPED} changed shape"
    added = ["bind 127.0.0.1", "log", f"prometheus 127.0.0.1:{metrics_port}"]
    if cache not in (None, "shipped"):
        added.append(cache)
    text = text.replace(header, f"consul:{port} {{\n" + "".join(f"    {line}\n" for line in added))
    to = "forward . " + " ".join(f"127.0.0.1:{p}" for p in upstreams)
    if forward_options:
        to += " {\n" + "".join(f"        {o}\n" for o in forward_options) + "    }"
    return text.replace(forward, to)


class CoreDNS:
    """The test CoreDNS on 127.0.0.1, free ports for DNS and metrics; `corefile` as above."""

    def __init__(self, binary: str, workdir: Path, upstreams: list[int], **options):
        self.binary, self.dir, self.upstreams, self.options = binary, workdir, upstreams, options
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.port = self.metrics_port = 0

    @property
    def log_path(self) -> Path:
        return self.dir / "coredns.log"

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def start(self, timeout: float = 20) -> "CoreDNS":
        for _ in range(5):      # a free port can be taken between the probe and CoreDNS's bind
            port, metrics_port = free_port(), free_port()
            conf = self.dir / "Corefile"
            conf.write_text(corefile(port, metrics_port, self.upstreams, **self.options))
            with open(self.log_path, "w") as log:
                self.proc = subprocess.Popen([self.binary, "-conf", str(conf)], cwd=self.dir, stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
            ready = f"consul.:{port} on 127.0.0.1"     # printed once the listeners are up
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and ready not in self.log() and time.monotonic() < deadline:
                time.sleep(0.02)
            if ready in self.log() and self.proc.poll() is None:
                self.port, self.metrics_port = port, metrics_port
                return self
            self.stop()
            if "address already in use" not in self.log():
                break
        raise RuntimeError(f"CoreDNS did not start:\n{self.log()}")

    def metric(self, name: str, **labels: str) -> float:
        samples = metric_samples(f"http://127.0.0.1:{self.metrics_port}")
        return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def zones(tmp_path) -> Path:
    path = tmp_path / "zones"
    path.mkdir()
    (path / "estate.toml").write_text(ZONES)
    (path / "big.toml").write_text("".join(
        f'[[service]]\nname = "big"\naddress = "10.20.{i // 250}.{i % 250 + 1}"\nport = {9000 + i}\n\n'
        for i in range(BIG)))
    return path


@pytest.fixture
def meshdns(tmp_path, zones):
    """Start `meshdns serve` processes on the test zones (seeded); all are stopped at the end."""
    started: list[ServerProcess] = []

    def start(name: str = "a", *, config: str = "", port: int = 0) -> ServerProcess:
        conf = tmp_path / f"meshdns-{name}.toml"
        conf.write_text(f"[dns]\nrng_seed = {SEED}\n{config}")
        args = ["--config", str(conf), "--zones", str(zones), "--data-dir", str(tmp_path / f"data-{name}")]
        proc = ServerProcess(*args, *(["--dns", f"127.0.0.1:{port}"] if port else [])).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc and proc.proc.poll() is None:
            proc.signal(signal.SIGCONT)
        proc.stop()


@pytest.fixture
def coredns(coredns_binary, tmp_path):
    """Start test CoreDNS instances in front of meshdns ports; all are stopped at the end."""
    started: list[CoreDNS] = []

    def start(upstreams: list[int], **options) -> CoreDNS:
        c = CoreDNS(coredns_binary, tmp_path / f"coredns-{len(started)}", upstreams, **options).start()
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def ask(port: int, name: str, rdtype: str = "A", *, timeout: float = 3.0) -> dns.message.Message:
    """What a pod's stub resolver sends: RD set, EDNS 1232 (dnspython's default payload)."""
    q = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)


def sections(msg: dns.message.Message) -> dict[str, list[str]]:
    """Each section as sorted record texts: what a client reads, whatever the order."""
    return {s: sorted(f"{rrset.name} {rrset.ttl} {dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text()}"
                      for rrset in getattr(msg, s) for rd in rrset)
            for s in ("answer", "authority", "additional")}


def addresses(msg: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)


def srv_pairs(msg: dns.message.Message) -> dict[str, str]:
    """SRV target -> the A record the additional section gives for it."""
    glue = {rrset.name.to_text(): rd.to_text() for rrset in msg.additional
            if rrset.rdtype == dns.rdatatype.A for rd in rrset}
    return {rd.target.to_text(): glue.get(rd.target.to_text(), "")
            for rrset in msg.answer if rrset.rdtype == dns.rdatatype.SRV for rd in rrset}


def queries_seen(proc: ServerProcess, name: str) -> float:
    """How many queries meshdns answered for one kind of name (its own /metrics)."""
    return sum(v for (n, labels), v in metric_samples(proc.http).items()
               if n == "meshdns_dns_queries_total" and dict(labels).get("kind") == name)


def probe_samples(proc: ServerProcess) -> dict[str, float]:
    """meshdns's count of `NS` queries by rcode: CoreDNS's probes are the only NS queries here."""
    out: dict[str, float] = {}
    for (n, labels), v in metric_samples(proc.http).items():
        labels = dict(labels)
        if n == "meshdns_dns_queries_total" and labels.get("qtype") == "NS":
            out[labels["rcode"]] = out.get(labels["rcode"], 0) + v
    return out


def probes(proc: ServerProcess) -> float:
    return sum(probe_samples(proc).values())


def probe_rcodes(proc: ServerProcess) -> list[str]:
    return [rcode for rcode, n in probe_samples(proc).items() if n]


# -- names through CoreDNS -----------------------------------------------------------


def test_names_answered_through_coredns_as_meshdns_answers_them(meshdns, coredns):
    mesh = meshdns()
    cd = coredns([mesh.dns_port])
    assert sorted(dig(cd.port, "+short", "legacy-billing.service.consul").split()) == LEGACY
    assert sorted(dig(cd.port, "+short", "billing-vm-2.node.consul").split()) == [LEGACY[1]]

    out = dig(cd.port, "legacy-billing.service.consul", "SRV")
    assert re.search(r"status: NOERROR,", out) and re.search(r"ANSWER: 2, AUTHORITY: 0, ADDITIONAL: 3", out)
    additional = out.split(";; ADDITIONAL SECTION:\n")[1].split("\n\n")[0].splitlines()
    assert sorted(line.split()[-1] for line in additional) == LEGACY
    assert all(line.split()[2:4] == ["IN", "A"] for line in additional)

    srv = ask(cd.port, "legacy-billing.service.consul", "SRV")
    assert sorted(srv_pairs(srv).values()) == LEGACY
    assert all(rd.port == 8080 for rrset in srv.answer for rd in rrset)

    # answer for answer what meshdns gives directly (the seeded order aside)
    for name, rdtype in [("legacy-billing.service.consul", "SRV"), ("billing-vm-1.node.consul", "A"),
                         ("nosuch.service.consul", "A"), ("legacy-billing.service.consul", "TXT")]:
        via, direct = ask(cd.port, name, rdtype), ask(mesh.dns_port, name, rdtype)
        assert (via.rcode(), sections(via)) == (direct.rcode(), sections(direct)), name
        assert via.flags & dns.flags.AA
    assert ask(cd.port, "nosuch.service.consul").rcode() == dns.rcode.NXDOMAIN


def test_large_answer_is_truncated_then_complete_over_tcp(meshdns, coredns):
    mesh = meshdns()
    cd = coredns([mesh.dns_port])
    out = dig(cd.port, "big.service.consul", "SRV")
    assert ";; Truncated, retrying in TCP mode." in out
    assert f"ANSWER: {BIG}, AUTHORITY: 0, ADDITIONAL: {BIG + 1}" in out      # + the OPT record
    assert re.search(r"SERVER: 127\.0\.0\.1#\d+\(127\.0\.0\.1\) \(TCP\)", out)

    q = dns.message.make_query("big.service.consul", "SRV", use_edns=0, payload=1232)
    msg, used_tcp = dns.query.udp_with_fallback(q, "127.0.0.1", port=cd.port, timeout=5)
    assert used_tcp and not msg.flags & dns.flags.TC
    pairs = srv_pairs(msg)
    assert len(pairs) == BIG and "" not in pairs.values()
    assert len(set(pairs.values())) == BIG
    udp = dns.query.udp(q, "127.0.0.1", port=cd.port, timeout=5)
    assert udp.flags & dns.flags.TC and len(udp.to_wire()) <= 1232


# -- several upstreams, health checks ------------------------------------------------


@pytest.mark.parametrize("failure", ["killed", "hung"])
def test_one_meshdns_down_queries_still_answered(meshdns, coredns, failure):
    """The shipped forward (random order) over two meshdns, one killed -9 or stopped (SIGSTOP)."""
    a, b = meshdns("a"), meshdns("b")
    cd = coredns([a.dns_port, b.dns_port])
    for _ in range(20):
        assert addresses(ask(cd.port, "legacy-billing.service.consul")) == LEGACY
    assert queries_seen(a, "service") > 0 and queries_seen(b, "service") > 0     # both in use

    if failure == "killed":
        b.kill()
    else:
        b.signal(signal.SIGSTOP)
    before = queries_seen(a, "service")
    n = 100
    for i in range(n):
        # a query that tries the hung one first waits forward's 2 s read timeout before the next upstream
        msg = ask(cd.port, "legacy-billing.service.consul", timeout=8)
        assert msg.rcode() == dns.rcode.NOERROR and addresses(msg) == LEGACY, i
    assert queries_seen(a, "service") - before == n
    to_b = f"127.0.0.1:{b.dns_port}"
    # probed every 0.5 s while it fails; past max_fails (2) CoreDNS no longer tries it
    wait_until(lambda: cd.metric("coredns_proxy_healthcheck_failures_total", to=to_b) > 2, timeout=20,
               what="CoreDNS marks the failed meshdns down")
    assert cd.metric("coredns_proxy_healthcheck_failures_total", to=f"127.0.0.1:{a.dns_port}") == 0


@pytest.mark.parametrize("recursor", ["none", "hung"])
def test_health_probe_answered_by_meshdns_brings_it_back(meshdns, coredns, upstreams, recursor):
    """CoreDNS probes `. IN NS` (RD set) only while an upstream is failing, and a failing
    upstream comes back only through a probe that gets a reply. meshdns replies REFUSED
    (no recursors) or SERVFAIL within 0.4 s (a recursor that hangs): both healthy."""
    config = ""
    if recursor == "hung":
        silent = upstreams(name="hung-recursor")
        silent.mode = "silent"
        config = f'[forwarding]\nrecursors = ["{silent.address}"]\ntimeout = "2s"\n'
    a = meshdns("a")
    b = meshdns("b", config=config)
    port_b = b.dns_port
    cd = coredns([port_b, a.dns_port], forward_options=("policy sequential",))   # b first while it is up
    to_b = f"127.0.0.1:{port_b}"
    assert addresses(ask(cd.port, "legacy-billing.service.consul")) == LEGACY
    assert (queries_seen(b, "service"), queries_seen(a, "service")) == (1, 0)

    b.kill()
    for _ in range(5):
        assert addresses(ask(cd.port, "legacy-billing.service.consul")) == LEGACY
    assert queries_seen(a, "service") == 5
    wait_until(lambda: cd.metric("coredns_proxy_healthcheck_failures_total", to=to_b) > 2, timeout=20,
               what="CoreDNS marks the killed meshdns down")

    b = meshdns("b", config=config, port=port_b)       # back on the same port, a new process

    def back() -> bool:
        assert addresses(ask(cd.port, "legacy-billing.service.consul")) == LEGACY
        return queries_seen(b, "service") > 0
    wait_until(back, timeout=20, interval=0.1, what="CoreDNS sends queries to the restarted meshdns again")
    expected = "REFUSED" if recursor == "none" else "SERVFAIL"
    assert probes(b) >= 1 and probe_rcodes(b) == [expected]      # the probe that brought it back
    failures = cd.metric("coredns_proxy_healthcheck_failures_total", to=to_b)

    # and it stays up: every query goes to b first again
    seen_a, seen_b = queries_seen(a, "service"), queries_seen(b, "service")
    for _ in range(5):
        assert addresses(ask(cd.port, "legacy-billing.service.consul")) == LEGACY
    assert (queries_seen(b, "service") - seen_b, queries_seen(a, "service") - seen_a) == (5, 0)
    assert cd.metric("coredns_proxy_healthcheck_failures_total", to=to_b) == failures


# -- CoreDNS's cache and a split -------------------------------------------------------


def split_view(port: int, n: int) -> tuple[dict[str, int], float]:
    """n queries for the split name as pods send them (RD, EDNS), one after another:
    how many answers went to each side, and the seconds they took."""
    got = {"legacy": 0, "pods": 0, "other": 0}
    base = dns.message.make_query("billing.service.consul", "A", use_edns=0, payload=1232).to_wire()
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        for i in range(n):
            s.sendto(struct.pack("!HH", i, 0x0100) + base[4:], ("127.0.0.1", port))
            msg = dns.message.from_wire(s.recv(4096))
            assert msg.id == i
            ips = addresses(msg)
            got["legacy" if ips == LEGACY else "pods" if ips == PODS else "other"] += 1
    return got, time.monotonic() - start


def split_answers(proc: ServerProcess) -> dict[str, float]:
    """What meshdns itself chose for the split, by side."""
    samples = metric_samples(proc.http)
    side = {"legacy-billing": "legacy", "billing:v2": "pods"}
    out = {"legacy": 0.0, "pods": 0.0}
    for (n, labels), v in samples.items():
        labels = dict(labels)
        if n == "meshdns_split_answers_total" and labels.get("split") == "billing":
            out[side[labels["target"]]] += v
    return out


N = 1000


@pytest.mark.parametrize("split_ttl", [0, 5])
@pytest.mark.parametrize("cache", [None, "shipped", "cache 30"])
def test_what_coredns_cache_does_to_a_split(meshdns, coredns, zones, cache, split_ttl):
    """N queries through CoreDNS for a 90/10 split (meshdns seeded), against what meshdns chose.

    - no cache (Corefile.consul as shipped): every query reaches meshdns, clients see its split;
    - the block's commented cache (`success 9984 5 0`): TTL 0 is not cached, the same;
      a split TTL of 5 s is cached 5 s;
    - `cache 30` (Kubernetes' default block): even TTL 0 is held for CoreDNS's 5 s minimum.
    A held answer goes to every client that asks while it lasts: one side for all of them."""
    if split_ttl:
        text = (zones / "estate.toml").read_text()
        (zones / "estate.toml").write_text(text + f'ttl = "{split_ttl}s"\n')
    mesh = meshdns()
    cd = coredns([mesh.dns_port], cache=cache)
    seen, took = split_view(cd.port, N)
    chosen = split_answers(mesh)
    print(f"\ncache={cache} split_ttl={split_ttl}: clients {seen} in {took:.2f} s; meshdns chose {chosen}")
    assert seen["other"] == 0
    held = cache == "cache 30" or (cache == "shipped" and split_ttl > 0)
    if not held:
        # each query reached meshdns; clients got exactly what it chose, a 90/10 split (3 sigma)
        assert (chosen["legacy"], chosen["pods"]) == (seen["legacy"], seen["pods"])
        assert abs(seen["pods"] - 0.1 * N) <= 3 * math.sqrt(N * 0.1 * 0.9)
    else:
        # one answer per 5 s of cache lifetime reached meshdns; all clients meanwhile got that side
        windows = math.floor(took / 5) + 1
        assert 1 <= chosen["legacy"] + chosen["pods"] <= windows + 1
        if windows == 1 and chosen["legacy"] + chosen["pods"] == 1:
            assert sorted(seen.values()) == [0, 0, N]
