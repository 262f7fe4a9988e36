"""The Grafana dashboard only uses metrics a running meshdns really exports."""
import json
import re

from harness import ROOT, api, query
from kube_double import KubeDouble, eventually

DASHBOARD = ROOT / "deploy" / "grafana" / "meshdns-dashboard.json"


def test_every_dashboard_query_uses_exported_metrics(start_server, tmp_path, upstreams):
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set(re.findall(r"\bmeshdns_[a-z_]+", " ".join(exprs)))
    assert len(dash["panels"]) >= 12 and len(used) >= 15
    up = upstreams()
    up.add("example.internal", "A", "192.0.2.1")
    with KubeDouble() as double:
        kc = double.kubeconfig(tmp_path / "kc", context="k")
        srv = start_server({"forwarding": {"recursors": [up.address]},
                            "kubernetes": [{"name": "k", "kubeconfig": str(kc)}]})
        eventually(lambda: srv.app.kubernetes[0].synced, timeout=10)
        assert api(srv.http, "PUT", "/v1/config", {"Kind": "service-splitter", "Name": "billing", "Splits": [
            {"Weight": 100, "Service": "legacy-billing"}]}).status == 200
        query(srv.dns_port, "billing.service.consul")
        query(srv.dns_port, "example.internal", rd=True)
        text = api(srv.http, "GET", "/metrics").text
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    missing = sorted(used - exported)
    assert not missing, f"dashboard uses metrics meshdns does not export: {missing}"
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
