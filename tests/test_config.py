"""The config file: every key optional, typos refused by name, durations as Consul writes them."""
import subprocess
import sys

import pytest

from meshdns.config import ConfigError, load_config, parse_config, parse_duration


def test_defaults():
    cfg = parse_config({})
    assert cfg.domain == "consul." and cfg.datacenter == "dc1"
    assert cfg.dns.listen == ("127.0.0.1", 8600) and cfg.http.listen == ("127.0.0.1", 8500)
    assert cfg.forwarding.recursors == () and "10.0.0.0/8" in cfg.forwarding.allow_recursion
    assert cfg.dns.busy_poll == pytest.approx(100e-6)
    assert parse_config({"kubernetes": [{}]}).kubernetes[0].watch_idle_timeout == 60.0
    assert parse_config({"kubernetes": [{"watch_idle_timeout": "90s"}]}).kubernetes[0].watch_idle_timeout == 90.0
    assert parse_config({"dns": {"busy_poll": "250us"}}).dns.busy_poll == pytest.approx(250e-6)


@pytest.mark.parametrize("data,message", [
    ({"domian": "x"}, "unknown key 'domian'"),
    ({"dns": {"only_pasing": True}}, "unknown key 'dns.only_pasing'"),
    ({"dns": {"node_ttl": "ten"}}, "dns.node_ttl"),
    ({"dns": {"listen": "127.0.0.1:99999"}}, "dns.listen"),
    ({"forwarding": {"recursors": ["not-an-ip"]}}, "forwarding.recursors"),
    ({"forwarding": {"strategy": "roundrobin"}}, "forwarding.strategy"),
    ({"forwarding": {"zone": [{"name": "cluster.local"}]}}, "forwarding.zone[0].servers"),
    ({"kubernetes": [{"address_mode": "pods"}]}, "kubernetes[0].address_mode"),
    ({"kubernetes": [{"watch_idle_timeout": "0s"}]}, "kubernetes[0].watch_idle_timeout: must be more than 0"),
    ({"kubernetes": [{"watch_idle_timeout": "soon"}]}, "kubernetes[0].watch_idle_timeout"),
    ({"acl": {"tokens": [{"write": ["x"]}]}}, "acl.tokens[0].secret"),
    ({"dns": {"a_record_limit": -1}}, "dns.a_record_limit"),
    ({"dns": {"busy_poll": "1s"}}, "dns.busy_poll: at most 10ms"),
    ({"dns": {"busy_poll": "fast"}}, "dns.busy_poll"),
    ({"locality": [{"cidr": "10.20.0.0/33", "zone": "a"}]}, "locality[0].cidr: '10.20.0.0/33' is not a CIDR"),
    ({"locality": [{"zone": "a"}]}, "locality[0].cidr: required"),
    ({"locality": [{"cidr": "10.20.0.0/16", "zone": "a"}, {"cidr": "10.30.0.0/16"}]}, "locality[1].zone: required"),
    ({"locality": [{"cidr": "10.20.0.0/16", "zone": "a", "region": "eu"}]}, "unknown key 'locality[0].region'"),
    ({"locality": [{"cidr": "10.20.0.0/16", "zone": 3}]}, "locality[0].zone: expected str"),
    ({"locality": {"cidr": "10.20.0.0/16", "zone": "a"}}, "locality: expected list"),
    ({"dns": {"same_zone_min": 0}}, "dns.same_zone_min: must be at least 1"),
    ({"dns": {"prefer_same_zone": "yes"}}, "dns.prefer_same_zone: expected bool"),
    ({"dns": {"enforce_intentions": 1}}, "dns.enforce_intentions: expected bool"),
    ({"dns": {"intentions_default": "Deny"}}, "dns.intentions_default: 'Deny' is not one of allow, deny"),
])
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(data)


@pytest.mark.parametrize("text,seconds", [("10s", 10), ("1m30s", 90), ("250ms", 0.25), ("2h", 7200), ("5", 5), (3, 3)])
def test_durations(text, seconds):
    assert parse_duration(text, key="k") == pytest.approx(seconds)


def test_locality_and_views_keys(tmp_path):
    assert parse_config({}).localities == ()
    dns = parse_config({}).dns
    assert (dns.prefer_same_zone, dns.same_zone_min, dns.enforce_intentions, dns.intentions_default) == \
        (False, 1, False, "allow")
    p = tmp_path / "meshdns.toml"
    p.write_text('''
[dns]
prefer_same_zone = true
same_zone_min = 2
enforce_intentions = true
intentions_default = "deny"
[[locality]]
cidr = "10.20.0.0/16"
zone = "eu-west-1a"
[[locality]]
cidr = "10.20.7.9/8"
zone = "eu-west-1b"
[[locality]]
cidr = "fd00:20::/48"
zone = "eu-west-1c"
''')
    cfg = load_config(p)
    assert (cfg.dns.prefer_same_zone, cfg.dns.same_zone_min, cfg.dns.enforce_intentions,
            cfg.dns.intentions_default) == (True, 2, True, "deny")
    # file order kept (the first match wins); host bits dropped
    assert cfg.localities == (("10.20.0.0/16", "eu-west-1a"), ("10.0.0.0/8", "eu-west-1b"),
                              ("fd00:20::/48", "eu-west-1c"))


def test_full_example_from_design_parses(tmp_path):
    p = tmp_path / "meshdns.toml"
    p.write_text('''
domain = "consul."
alt_domain = "mesh.internal."
datacenter = "dc1"
[dns]
listen = "127.0.0.1:8600"
service_ttl = { "*" = "0s", "web*" = "5s", "billing" = "10s" }
soa = { min_ttl = 0, refresh = 3600, retry = 600, expire = 86400 }
[[acl.tokens]]
secret = "s3cr3t"
write = ["billing", "legacy-"]
[forwarding]
recursors = ["10.0.0.2", "10.0.0.3:53"]
timeout = "2s"
[[forwarding.zone]]
name = "cluster.local"
servers = ["10.96.0.10"]
[cache]
serve_stale = "1h"
[[kubernetes]]
name = "prod"
kubeconfig = "~/.kube/config"
context = "prod"
datacenter = "dc1"
''')
    cfg = load_config(p)
    assert cfg.domains == ("consul.", "mesh.internal.")
    assert cfg.forwarding.recursors == (("10.0.0.2", 53), ("10.0.0.3", 53))
    assert cfg.forwarding.zones[0].name == "cluster.local."
    assert dict(cfg.dns.service_ttl) == {"*": 0, "web*": 5, "billing": 10}
    assert cfg.kubernetes[0].context == "prod"


def test_cli_reports_config_error_and_exits_2(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[dns]\nlisten = 8600\n")
    out = subprocess.run([sys.executable, "-m", "meshdns", "serve", "--config", str(p)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "dns.listen: expected str" in out.stderr and str(p) in out.stderr
