"""A real recursive resolver as meshdns's client, the way CoreDNS or a site resolver uses it.

unbound forwards `consul.` to meshdns and `.` to a scripted upstream, both on
127.0.0.1, so nothing leaves loopback; dig asks unbound.
"""
import re

import pytest

from harness import Unbound, dig

pytestmark = pytest.mark.skipif(Unbound.binary() is None, reason="unbound is not installed")


def status(out: str) -> str:
    return re.search(r"status: (\w+)", out).group(1)


def short(port: int, *args: str) -> list[str]:
    return sorted(dig(port, "+short", *args).split("\n")[:-1])


@pytest.fixture(params=["forward", "stub"])
def resolver(request, server, upstreams, tmp_path):
    """unbound with a forward-zone (or stub-zone) `consul.` -> meshdns and `.` -> an upstream."""
    internet = upstreams(name="internet")
    internet.add("example.internal", "A", "10.50.0.1")
    internet.add("gateway.payments.example.com", "A", "203.0.113.7")
    ub = Unbound(tmp_path, {"consul.": server.dns_port, ".": internet.port}, kind=request.param).start()
    yield ub, server, internet
    ub.stop()


def test_service_names_through_unbound(resolver):
    ub, _, internet = resolver
    assert short(ub.port, "legacy-billing.service.consul") == ["192.168.28.213", "192.168.28.214"]
    srv = short(ub.port, "legacy-billing.service.consul", "SRV")
    assert len(srv) == 2 and all(line.startswith("1 10 8080 ") for line in srv)
    assert short(ub.port, "billing-vm-1.node.consul") == ["192.168.28.213"]
    out = dig(ub.port, "nosuch.service.consul")
    assert status(out) == "NXDOMAIN"
    assert internet.count() == 0            # consul names went to meshdns only


def test_other_names_through_unbound_go_elsewhere(resolver):
    ub, _, internet = resolver
    assert short(ub.port, "example.internal") == ["10.50.0.1"]
    assert internet.count("example.internal") == 1


def test_hostname_instance_cname_is_chased_by_unbound(resolver):
    ub, _, internet = resolver
    out = short(ub.port, "payments-gateway.service.consul")
    assert out == ["203.0.113.7", "gateway.payments.example.com."]

