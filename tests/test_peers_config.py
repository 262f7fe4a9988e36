"""`[[peer]]` tables: each mistake is refused with the key that has it, before anything starts."""
import re
import subprocess
import sys

import tomllib

import pytest

from harness import ROOT
from meshdns.config import ConfigError, parse_config, with_overrides

URL = "http://127.0.0.1:8500"


@pytest.mark.parametrize("peer,message", [
    ({"datacenter": "dc1", "url": URL}, "peer[0].datacenter: 'dc1' is our own datacenter"),
    ({"url": URL}, "peer[0].datacenter: required"),
    ({"datacenter": "dc 2", "url": URL}, "peer[0].datacenter: required, one DNS label"),
    ({"datacenter": "dc2"}, "peer[0].url: required"),
    ({"datacenter": "dc2", "url": "10.1.0.5:8500"}, "peer[0].url: '10.1.0.5:8500' is not an http:// or https:// URL"),
    ({"datacenter": "dc2", "url": "http://h:99999"}, "peer[0].url: bad port"),
    ({"datacenter": "dc2", "url": URL, "tokenfile": "x"}, "unknown key 'peer[0].tokenfile'"),
    ({"datacenter": "dc2", "url": URL, "services": "billing"}, "peer[0].services: expected list"),
    ({"datacenter": "dc2", "url": URL, "services": [""]}, "peer[0].services: expected non-empty globs"),
    ({"datacenter": "dc2", "url": URL, "wait": "20m"}, "peer[0].wait: between 1s and 10m"),
    ({"datacenter": "dc2", "url": URL, "backoff": "1s", "max_backoff": "100ms"}, "peer[0].max_backoff"),
    ({"datacenter": "dc2", "url": URL, "token_file": "/nonexistent/dc2.token"},
     "peer[0].token_file: cannot read /nonexistent/dc2.token"),
])
def test_peer_errors_name_the_key(peer, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"datacenter": "dc1", "peer": [peer]})


def test_two_peers_for_one_datacenter_are_refused():
    with pytest.raises(ConfigError, match=re.escape("peer[1].datacenter: 'dc2' names two peers")):
        parse_config({"peer": [{"datacenter": "dc2", "url": URL}, {"datacenter": "DC2", "url": URL}]})


def test_the_datacenter_flag_may_not_become_a_peers():
    cfg = parse_config({"peer": [{"datacenter": "dc2", "url": URL}]})
    with pytest.raises(ConfigError, match=re.escape("peer[0].datacenter: 'dc2' is our own datacenter")):
        with_overrides(cfg, datacenter="DC2")


def test_token_file_is_read_stripped_and_never_shown(tmp_path):
    path = tmp_path / "dc2.token"
    path.write_text("0f3c-secret\n")
    cfg = parse_config({"peer": [{"datacenter": "dc2", "url": URL + "/", "token_file": str(path),
                                  "services": ["Billing-*"]}]})
    peer = cfg.peers[0]
    assert peer.token == "0f3c-secret" and peer.url == URL and peer.services == ("billing-*",)
    assert "0f3c-secret" not in repr(cfg)
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=re.escape(f"peer[0].token_file: {empty} is empty")):
        parse_config({"peer": [{"datacenter": "dc2", "url": URL, "token_file": str(empty)}]})
    two = tmp_path / "two.token"
    two.write_text("one\ntwo\n")
    with pytest.raises(ConfigError, match=re.escape("peer[0].token_file: ") + ".*one token on one line"):
        parse_config({"peer": [{"datacenter": "dc2", "url": URL, "token_file": str(two)}]})


def test_defaults():
    peer = parse_config({"peer": [{"datacenter": "dc2", "url": URL}]}).peers[0]
    assert (peer.services, peer.wait, peer.token) == (("*",), 300.0, "")


def test_serve_refuses_a_peer_of_our_own_datacenter_and_exits_2(tmp_path):
    path = tmp_path / "meshdns.toml"
    path.write_text(f'datacenter = "dc1"\n[[peer]]\ndatacenter = "dc1"\nurl = "{URL}"\n')
    out = subprocess.run([sys.executable, "-m", "meshdns", "serve", "--config", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "peer[0].datacenter: 'dc1' is our own datacenter" in out.stderr


def test_the_readme_and_design_examples_parse():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Datacenters and failover\n")
    section = readme[start:readme.index("\n## ", start + 1)]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    dcs = [parse_config(tomllib.loads(block)) for block in blocks]
    assert [(c.datacenter, [p.datacenter for p in c.peers]) for c in dcs] == [("dc1", ["dc2"]), ("dc2", ["dc1"])]
    design = parse_config(tomllib.loads('''
[[peer]]
datacenter = "dc2"                  # its catalog is served as <svc>.service.dc2.consul
url = "http://10.1.0.5:8500"        # a meshdns, or a Consul agent/server HTTP API
token_file = ""                     # sent as X-Consul-Token
services = ["*"]                    # globs of service names to import
'''))
    assert design.peers[0].url == "http://10.1.0.5:8500" and design.peers[0].token == ""
