"""Zones from zone files and registrations, and client classes over a running server's catalog."""
from harness import api
from meshdns.catalog.client_class import ClientClass, Classifier, parse_localities
from meshdns.catalog.locality import instance_zone

ZONE_FILE = '''
[[node]]
name = "vm-a"
address = "10.50.0.1"
meta = { zone = "zone-a" }

[[node]]
name = "vm-b"
address = "10.50.0.2"
meta = { zone = "zone-b" }

[[service]]
name = "billing"
id = "billing-on-a"
node = "vm-a"
port = 8080

[[service]]
name = "billing"
id = "billing-moved"
node = "vm-b"
address = "10.50.1.9"
meta = { zone = "zone-c" }

[[service]]
name = "billing"
id = "billing-plain"
address = "10.50.1.10"
'''


def zones(srv, service):
    snap = srv.app.store.snapshot
    return {i.id: instance_zone(snap, i) for i in snap.instances(service)}


def test_zone_files_and_registrations_give_instances_zones(start_server, tmp_path):
    directory = tmp_path / "zones"
    directory.mkdir()
    (directory / "estate.toml").write_text(ZONE_FILE)
    srv = start_server({"locality": [{"cidr": "10.60.0.0/16", "zone": "zone-office"}]}, zones=directory)
    # zone files: the service meta zone, else the node's
    assert zones(srv, "billing") == {"billing-on-a": "zone-a", "billing-moved": "zone-c", "billing-plain": ""}

    # registrations: the same rule (agent registrations carry the service meta; catalog ones the node meta)
    body = {"Name": "web", "ID": "web-1", "Address": "10.50.2.1", "Port": 80, "Meta": {"zone": "zone-b"}}
    assert api(srv.http, "PUT", "/v1/agent/service/register", body).status == 200
    body = {"Node": "vm-c", "Address": "10.50.0.3", "NodeMeta": {"zone": "zone-c"},
            "Service": {"Service": "web", "ID": "web-2", "Port": 80}}
    assert api(srv.http, "PUT", "/v1/catalog/register", body).status == 200
    assert zones(srv, "web") == {"web-1": "zone-b", "web-2": "zone-c"}

    # client classes over that catalog, with the server's own [[locality]] table
    classifier = Classifier(localities=parse_localities(srv.app.cfg.localities))
    snap = srv.app.store.snapshot
    assert classifier(snap, "10.50.2.1") == ClientClass("zone-b", frozenset({"web"}))
    assert classifier(snap, "10.50.0.3") == ClientClass("zone-c", frozenset({"web"}))      # on its node's address
    assert classifier(snap, "10.50.0.1") == ClientClass("zone-a", frozenset({"billing"}))
    assert classifier(snap, "10.50.0.2") == ClientClass("zone-b", frozenset())              # a node, no service
    assert classifier(snap, "10.60.3.4") == ClientClass("zone-office", frozenset())

    # a registration gives an address an identity: the next classification sees it
    body = {"Name": "batch", "ID": "batch-1", "Address": "10.60.3.4", "Port": 80}
    assert api(srv.http, "PUT", "/v1/agent/service/register", body).status == 200
    assert classifier(srv.app.store.snapshot, "10.60.3.4") == ClientClass("zone-office", frozenset({"batch"}))
