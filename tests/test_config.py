"""The config file: every key optional, typos refused by name, durations as Consul writes them."""
import subprocess
import sys

import pytest

from meshdns.config import ConfigError, load_config, parse_config, parse_duration, with_overrides


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
    ({"dns": {"max_client_classes": 0}}, "dns.max_client_classes: must be at least 1"),
    ({"dns": {"reply_cache_mb": -1}}, "dns.reply_cache_mb: must be at least 0"),
    ({"dns": {"max_plans": "many"}}, "dns.max_plans"),
    ({"dns": {"busy_poll": "1s"}}, "dns.busy_poll: at most 10ms"),
    ({"dns": {"busy_poll": "fast"}}, "dns.busy_poll"),
    # every value in range, every combination consistent (config.validate)
    ({"domain": ""}, "domain: must not be empty"),
    ({"alt_domain": "consul"}, "alt_domain: is the same as domain"),
    ({"datacenter": "dc 1"}, "datacenter: 'dc 1' is not a DNS label"),
    ({"data_dir": ""}, "data_dir: must not be empty"),
    ({"zones": ""}, "zones: must not be empty"),
    ({"zones_poll_interval": "0s"}, "zones_poll_interval: must be more than 0"),
    ({"log_level": "loud"}, "log_level: 'loud' is not one of"),
    ({"dns": {"udp_payload": 511}}, "dns.udp_payload: must be between 512 and 65535"),
    ({"dns": {"tcp_idle_timeout": 0}}, "dns.tcp_idle_timeout: must be more than 0"),
    ({"dns": {"tcp_max_connections": 0}}, "dns.tcp_max_connections: must be at least 1"),
    ({"dns": {"workers": 0}}, "dns.workers: must be at least 1"),
    ({"dns": {"rrl_responses_per_second": -5}}, "dns.rrl_responses_per_second: must be at least 0"),
    ({"dns": {"node_ttl": "100000000h"}}, "dns.node_ttl: must be between 0 and 2147483647 seconds"),
    ({"dns": {"service_ttl": {"web": "70y"}}}, "dns.service_ttl.web"),
    ({"dns": {"service_ttl": {"w*b": "5s"}}}, r"dns.service_ttl.w\*b: only a trailing \* is supported"),
    ({"dns": {"soa": {"min_ttl": -1}}}, "dns.soa.min_ttl: must be between 0 and 2147483647"),
    ({"dns": {"soa": {"expire": 2**31}}}, "dns.soa.expire: must be between 0 and 2147483647"),
    ({"dns": {"drain_timeout": -1}}, "dns.drain_timeout: duration must not be negative"),
    ({"http": {"max_body": 0}}, "http.max_body: must be at least 1"),
    ({"http": {"max_blocking_queries": 0}}, "http.max_blocking_queries: must be at least 1"),
    ({"http": {"idle_timeout": "0s"}}, "http.idle_timeout: must be more than 0"),
    ({"http": {"max_wait": "0s"}}, "http.max_wait: must be more than 0"),
    ({"http": {"tls_key": "k.pem"}}, "http.tls_cert: required when http.tls_key is set"),
    ({"http": {"listen": "0.0.0.0:8500"}}, "http.listen: 0.0.0.0 is not a loopback address"),
    ({"forwarding": {"timeout": "0s"}}, "forwarding.timeout: must be more than 0"),
    ({"forwarding": {"zone": [{"name": "x.consul", "servers": ["127.0.0.1"]}]}},
     "forwarding.zone[0].name: 'x.consul.' is inside our own domain 'consul.'"),
    ({"forwarding": {"zone": [{"name": "a.test", "servers": ["127.0.0.1"]},
                              {"name": "A.test.", "servers": ["127.0.0.2"]}]}},
     "forwarding.zone[1].name: 'a.test.' has two rules"),
    ({"cache": {"max_entries": -1}}, "cache.max_entries: must be at least 0"),
    ({"cache": {"min_ttl": "2h", "max_ttl": "1h"}}, "cache.min_ttl: must not be more than cache.max_ttl"),
    ({"cache": {"max_ttl": "100000000h"}}, "cache.max_ttl: must be between 0 and 2147483647"),
    ({"kubernetes": [{"name": ""}]}, "kubernetes[0].name: must not be empty"),
    ({"kubernetes": [{"name": "a"}, {"name": "a"}]}, "kubernetes[1].name: 'a' names two clusters"),
    ({"kubernetes": [{"datacenter": "east 1"}]}, "kubernetes[0].datacenter: 'east 1' is not a DNS label"),
    ({"kubernetes": [{"in_cluster": True, "kubeconfig": "~/.kube/config"}]}, "kubernetes[0].in_cluster: give"),
    ({"kubernetes": [{"sync_to_kubernetes": "endpoints", "write_namespace": ""}]},
     "kubernetes[0].write_namespace: required when sync_to_kubernetes is on"),
    ({"kubernetes": [{"watch_timeout": 0}]}, "kubernetes[0].watch_timeout: must be more than 0"),
    ({"kubernetes": [{"request_timeout": 0}]}, "kubernetes[0].request_timeout: must be more than 0"),
    ({"kubernetes": [{"backoff": 0}]}, "kubernetes[0].backoff: must be more than 0"),
    ({"kubernetes": [{"backoff": "2s", "max_backoff": "1s"}]}, "kubernetes[0].max_backoff: must not be less than"),
    ({"health": {"max_in_flight": 0}}, "health.max_in_flight: must be at least 1"),
    ({"health": {"output_max_size": 0}}, "health.output_max_size: must be at least 1"),
    ({"health": {"max_probes": 3}}, "unknown key 'health.max_probes'"),
    ({"peer": [{"datacenter": "dc1", "url": "http://127.0.0.1:8500"}]},
     "peer[0].datacenter: 'dc1' is our own datacenter"),
    ({"peer": [{"datacenter": "dc2", "url": "http://127.0.0.1:8500", "backoff": "2s", "max_backoff": "1s"}]},
     "peer[0].max_backoff: must not be less than backoff"),
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


@pytest.mark.parametrize("flags,message", [
    ({"datacenter": "dc 1"}, "--datacenter: 'dc 1' is not a DNS label"),
    ({"datacenter": ""}, "--datacenter: '' is not a DNS label"),
    ({"domain": "bad..name"}, "--domain: 'bad..name.' is not a valid domain name"),
    ({"alt_domain": "consul"}, "--alt-domain: is the same as domain"),
    ({"workers": 0}, "--workers: must be at least 1"),
    ({"dns": "127.0.0.1:99999"}, "--dns: bad port"),
    ({"http": "0.0.0.0:8500"}, "--http: 0.0.0.0 is not a loopback address"),
    ({"http_tls_key": "k.pem"}, "http.tls_cert: required when http.tls_key is set"),
    ({"recursor": ["resolver.example"]}, "--recursor: 'resolver.example' is not an IP address"),
    ({"zones": ""}, "--zones: must not be empty"),
    ({"data_dir": ""}, "--data-dir: must not be empty"),
])
def test_flags_go_through_the_checks_the_file_gets(flags, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        with_overrides(parse_config({}), **flags)


def test_a_flag_can_fix_a_combination_the_file_alone_would_refuse():
    cfg = parse_config({"acl": {"tokens": [{"secret": "s"}]}})
    assert with_overrides(cfg, http="0.0.0.0:8500").http.listen == ("0.0.0.0", 8500)   # tokens: not loopback-only
    assert with_overrides(parse_config({}), http="0.0.0.0:8500", http_insecure=True).http.insecure


def test_serve_refuses_a_bad_datacenter_flag_naming_it(tmp_path):
    out = subprocess.run([sys.executable, "-m", "meshdns", "serve", "--zones", str(tmp_path), "--datacenter", "dc 1"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--datacenter: 'dc 1' is not a DNS label" in out.stderr


def test_limits_are_keys_with_defaults():
    cfg = parse_config({})
    assert (cfg.zones_poll_interval, cfg.dns.drain_timeout, cfg.http.max_wait) == (1.0, 2.0, 600.0)
    assert (cfg.health.max_in_flight, cfg.health.output_max_size) == (64, 4096)
    cfg = parse_config({"zones_poll_interval": "250ms", "dns": {"drain_timeout": "10s"}, "http": {"max_wait": "1m"},
                        "health": {"max_in_flight": 8, "output_max_size": 100}})
    assert (cfg.zones_poll_interval, cfg.dns.drain_timeout, cfg.http.max_wait) == (0.25, 10.0, 60.0)
    assert (cfg.health.max_in_flight, cfg.health.output_max_size) == (8, 100)
