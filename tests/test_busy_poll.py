"""dns.busy_poll: under steady load the server polls its socket instead of sleeping, and stops when idle."""
import os
import socket
import time
from pathlib import Path

import dns.message

from harness import ServerProcess, query, rrset_values

NAME = "legacy-billing.service.consul"


def _server(tmp_path: Path, busy_poll: str) -> ServerProcess:
    config = tmp_path / "meshdns.toml"
    config.write_text(f'[dns]\nbusy_poll = "{busy_poll}"\n')
    return ServerProcess("--config", str(config), "--data-dir", str(tmp_path / "data")).start()


def _main_thread(pid: int) -> Path:
    return Path(f"/proc/{pid}/task/{pid}")


def _sleeps(pid: int) -> int:
    """Times the event loop thread went to sleep (voluntary context switches)."""
    for line in (_main_thread(pid) / "status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc")


def _cpu_seconds(pid: int) -> float:
    fields = (_main_thread(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _steady_stream(port: int, count: int, gap: float) -> int:
    """Query, wait for the answer, pause `gap`, again: the shape of steady client traffic. Answers received."""
    wire = dns.message.make_query(NAME, "A").to_wire()
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for _ in range(count):
            s.sendto(wire, ("127.0.0.1", port))
            if dns.message.from_wire(s.recv(4096)).answer:
                answered += 1
            time.sleep(gap)
    return answered


def _sleeps_for_stream(tmp_path: Path, busy_poll: str) -> int:
    proc = _server(tmp_path / busy_poll, busy_poll)
    try:
        before = _sleeps(proc.proc.pid)
        assert _steady_stream(proc.dns_port, 1000, 0.0002) == 1000
        return _sleeps(proc.proc.pid) - before
    finally:
        proc.stop()


def test_steady_traffic_is_served_without_sleeping_between_packets(tmp_path):
    """The same stream, to a server that polls and to one that does not: compared with each other, not with
    a fixed figure, so a busy machine (which delays both) does not decide the outcome."""
    (tmp_path / "5ms").mkdir()
    (tmp_path / "0s").mkdir()
    polling = _sleeps_for_stream(tmp_path, "5ms")
    sleeping = _sleeps_for_stream(tmp_path, "0s")
    print(f"\nevent loop sleeps for 1000 packets: {polling} polling, {sleeping} not polling")
    assert polling * 3 < sleeping, (polling, sleeping)


def test_polling_stops_when_traffic_stops(tmp_path):
    proc = _server(tmp_path, "10ms")
    try:
        assert _steady_stream(proc.dns_port, 300, 0.0002) == 300
        time.sleep(0.1)
        cpu = _cpu_seconds(proc.proc.pid)
        time.sleep(2.0)
        idle_cpu = _cpu_seconds(proc.proc.pid) - cpu
        assert idle_cpu < 0.3, f"an idle server used {idle_cpu:.2f} s of CPU in 2 s"
        assert sorted(rrset_values(query(proc.dns_port, NAME))) == ["192.168.28.213", "192.168.28.214"]
    finally:
        proc.stop()
