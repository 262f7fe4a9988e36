"""zones/ changes reach answers; a broken file is reported with file:line and the old content stays."""
import logging
import os
import signal
import subprocess
import sys

import pytest

from harness import ROOT, ServerProcess, api, query, rrset_values, wait_until


def write(path, text):
    path.write_text(text)
    # make sure the mtime moves even on coarse-grained filesystems
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


SVC = '[[service]]\nname = "app"\naddress = "{ip}"\nport = 80\n'


@pytest.fixture
def zones(tmp_path):
    d = tmp_path / "zones"
    d.mkdir()
    write(d / "app.toml", SVC.format(ip="10.1.1.1"))
    return d


def answers(port):
    return rrset_values(query(port, "app.service.consul"))


def test_change_is_served_on_next_query(start_server, zones):
    srv = start_server(zones=zones)
    assert answers(srv.dns_port) == ["10.1.1.1"]
    write(zones / "app.toml", SVC.format(ip="10.1.1.2"))
    wait_until(lambda: answers(srv.dns_port) == ["10.1.1.2"])
    (zones / "app.toml").unlink()
    wait_until(lambda: query(srv.dns_port, "app.service.consul").rcode() == 3)


def test_bad_file_keeps_old_content_and_names_file_and_line(start_server, zones, caplog):
    srv = start_server(zones=zones)
    caplog.set_level(logging.ERROR, logger="meshdns.sources.zones")
    write(zones / "app.toml", SVC.format(ip="10.1.1.1") + '\n[[service]]\nname = "app"\naddress = "10.1.1.300"\n')
    path = str(zones / "app.toml")
    wait_until(lambda: path in srv.app.zones.errors)
    message = srv.app.zones.errors[path]
    assert message.startswith(f"{path}:6: ") and "10.1.1.300" in message and "service[1].address" in message
    assert any(f"{path}:6:" in r.getMessage() for r in caplog.records)
    assert answers(srv.dns_port) == ["10.1.1.1"]  # previous content still served
    write(zones / "app.toml", SVC.format(ip="10.1.1.9"))
    wait_until(lambda: answers(srv.dns_port) == ["10.1.1.9"])
    assert path not in srv.app.zones.errors


def test_toml_syntax_error_line(start_server, zones):
    srv = start_server(zones=zones)
    write(zones / "app.toml", SVC.format(ip="10.1.1.1") + "tags = [unclosed\n")
    path = str(zones / "app.toml")
    wait_until(lambda: path in srv.app.zones.errors)
    assert srv.app.zones.errors[path].startswith(f"{path}:5:")
    assert answers(srv.dns_port) == ["10.1.1.1"]


def test_bad_master_file_line(start_server, zones):
    good = "$ORIGIN lab.test.\n@ 60 IN SOA ns hostmaster 1 2 3 4 5\nwww 60 IN A 10.9.9.9\n"
    write(zones / "lab.test.zone", good)
    srv = start_server(zones=zones)
    assert rrset_values(query(srv.dns_port, "www.lab.test")) == ["10.9.9.9"]
    write(zones / "lab.test.zone", good + "bad 60 IN A not-an-ip\n")
    path = str(zones / "lab.test.zone")
    wait_until(lambda: path in srv.app.zones.errors)
    assert srv.app.zones.errors[path].startswith(f"{path}:4:")
    assert rrset_values(query(srv.dns_port, "www.lab.test")) == ["10.9.9.9"]


def test_a_zone_file_still_being_read_does_not_hold_up_answers(start_server, zones, tmp_path):
    """Changed files are read beside the DNS loop. While a zone file's $INCLUDE cannot be read yet (a FIFO no
    one has written: a slow disk or a large file, made deterministic), every name keeps answering; the new
    records are served once the file has been read."""
    srv = start_server(zones=zones)
    fifo = tmp_path / "hosts.inc"
    os.mkfifo(fifo)
    write(zones / "lab.test.zone", f"$ORIGIN lab.test.\n@ 60 IN SOA ns hostmaster 1 2 3 4 5\n$INCLUDE {fifo}\n")
    writer = None

    def reader_waiting():   # opening a FIFO to write without blocking works once a reader has it open
        nonlocal writer
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return False
        return True

    try:
        wait_until(reader_waiting)
        for _ in range(5):
            assert answers(srv.dns_port) == ["10.1.1.1"]
        assert query(srv.dns_port, "www.lab.test").rcode() == 5   # not ours (REFUSED) before it is read
        os.write(writer, b"www 60 IN A 10.9.9.9\n")
    finally:
        if writer is not None:
            os.close(writer)   # end of file: the reader finishes
    wait_until(lambda: rrset_values(query(srv.dns_port, "www.lab.test")) == ["10.9.9.9"])
    assert str(zones / "lab.test.zone") not in srv.app.zones.errors


def test_unknown_node_and_split_loop_rejected(start_server, zones):
    srv = start_server(zones=zones)
    write(zones / "more.toml", '[[service]]\nname = "x"\nnode = "ghost"\nport = 1\n')
    path = str(zones / "more.toml")
    wait_until(lambda: path in srv.app.zones.errors)
    assert "unknown node 'ghost'" in srv.app.zones.errors[path] and ":1:" in srv.app.zones.errors[path]
    write(zones / "more.toml", '[[split]]\nname = "a"\ntargets = [{service = "b", weight = 1}]\n\n'
                               '[[split]]\nname = "b"\ntargets = [{service = "app", weight = 1}]\n')
    wait_until(lambda: "itself a split" in srv.app.zones.errors.get(path, ""))
    assert answers(srv.dns_port) == ["10.1.1.1"]


def test_sighup_reloads_and_sigterm_exits_cleanly(zones, tmp_path):
    proc = ServerProcess("--zones", str(zones), "--data-dir", str(tmp_path / "data")).start()
    try:
        assert answers(proc.dns_port) == ["10.1.1.1"]
        # same size and mtime restored: only an explicit reload can notice the change
        st = (zones / "app.toml").stat()
        (zones / "app.toml").write_text(SVC.format(ip="10.1.1.7"))
        os.utime(zones / "app.toml", ns=(st.st_atime_ns, st.st_mtime_ns))
        proc.signal(signal.SIGHUP)
        wait_until(lambda: answers(proc.dns_port) == ["10.1.1.7"])
    finally:
        assert proc.stop() == 0
    assert "stopped" in proc.stderr()


def test_service_on_a_node_of_another_datacenter_lives_there(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    write(zones / "nodes.toml", '[[node]]\nname = "east-vm"\naddress = "10.7.0.1"\ndatacenter = "east"\n')
    write(zones / "svc.toml", '[[service]]\nname = "ledger"\nnode = "east-vm"\nport = 80\n\n'
                              '[[service]]\nname = "app"\naddress = "10.7.0.9"\nport = 80\n')
    srv = start_server(zones=zones)
    assert srv.app.zones.errors == {}
    assert rrset_values(query(srv.dns_port, "ledger.service.east.consul")) == ["10.7.0.1"]
    assert rrset_values(query(srv.dns_port, "ledger.service.east.consul", "SRV")) == ["1 1 80 east-vm.node.east.consul."]
    assert query(srv.dns_port, "ledger.service.consul").rcode() == 3      # not in ours
    assert rrset_values(query(srv.dns_port, "app.service.consul")) == ["10.7.0.9"]  # the rest of the file too


def test_a_node_name_in_two_other_datacenters_is_named_in_the_error(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    write(zones / "nodes.toml", '[[node]]\nname = "vm"\naddress = "10.7.0.1"\ndatacenter = "east"\n\n'
                                '[[node]]\nname = "vm"\naddress = "10.8.0.1"\ndatacenter = "west"\n')
    write(zones / "svc.toml", '[[service]]\nname = "ledger"\nnode = "vm"\nport = 80\n')
    srv = start_server(zones=zones)
    path = str(zones / "svc.toml")
    assert srv.app.zones.errors[path] == (f"{path}:1: service 'ledger': unknown node 'vm' in datacenter 'dc1' "
                                          "(nodes of that name are in east, west: set datacenter)")


def readyz(srv):
    r = api(srv.http, "GET", "/readyz")
    return r.status, r.json()["sources"]["zones"]


def test_a_file_broken_at_start_up_is_not_ready_until_fixed(start_server, zones, caplog):
    """Nothing previous to keep: /readyz is 503 naming the file; fixed (or removed) -> 200 without a restart."""
    caplog.set_level(logging.INFO, logger="meshdns.sources.zones")
    write(zones / "bad.toml", SVC.format(ip="10.1.1.2").replace("port = 80", "port = 99999"))
    write(zones / "gone.toml", "[[service]\n")
    srv = start_server(zones=zones)
    status, source = readyz(srv)
    bad, gone = str(zones / "bad.toml"), str(zones / "gone.toml")
    assert status == 503 and source["synced"] is False
    assert sorted(source["errors"]) == [bad, gone] and source["errors"][bad].startswith(f"{bad}:1: service[0].port")
    assert answers(srv.dns_port) == ["10.1.1.1"]          # everything that loads is served meanwhile
    logged = [r.getMessage() for r in caplog.records]
    assert not any("previous content kept" in m for m in logged), logged
    assert any(m.startswith("not ready: 2 zone file(s)") for m in logged), logged

    write(zones / "bad.toml", SVC.format(ip="10.1.1.2"))
    wait_until(lambda: bad not in readyz(srv)[1]["errors"], what="bad.toml loaded")
    assert readyz(srv)[0] == 503                           # gone.toml still fails
    (zones / "gone.toml").unlink()
    wait_until(lambda: readyz(srv)[0] == 200, what="ready once every file loads")
    assert readyz(srv)[1] == {"synced": True, "errors": {}}
    assert sorted(answers(srv.dns_port)) == ["10.1.1.1", "10.1.1.2"]

    # broken after that: the previous content is kept and the source stays ready, saying why
    write(zones / "bad.toml", "[[service]\n")
    wait_until(lambda: bad in readyz(srv)[1]["errors"])
    assert readyz(srv)[0] == 200 and sorted(answers(srv.dns_port)) == ["10.1.1.1", "10.1.1.2"]


def serve(*args, cwd=ROOT):
    """`meshdns serve` (this tree's) run to its exit."""
    return subprocess.run([sys.executable, "-m", "meshdns", "serve", "--dns", "127.0.0.1:0", "--http", "127.0.0.1:0",
                           *args], cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)


def test_a_zones_path_that_does_not_exist_stops_serve_naming_it(tmp_path):
    missing = tmp_path / "zonez"
    out = serve("--data-dir", str(tmp_path / "data"), "--zones", str(missing))
    assert out.returncode == 2 and f"zones: {missing} does not exist" in out.stderr, out.stderr
    config = tmp_path / "meshdns.toml"
    config.write_text('zones = "zonez"\n')
    out = serve("--config", str(config), "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert out.returncode == 2 and f"zones: {missing} does not exist" in out.stderr, out.stderr
    (tmp_path / "zones.toml").write_text("")
    out = serve("--data-dir", str(tmp_path / "data"), "--zones", str(tmp_path / "zones.toml"))
    assert out.returncode == 2 and f"zones: {tmp_path / 'zones.toml'} is not a directory" in out.stderr
    # the default is zones/ in the working directory
    out = serve("--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert out.returncode == 2 and f"zones: {tmp_path / 'zones'} does not exist" in out.stderr, out.stderr
