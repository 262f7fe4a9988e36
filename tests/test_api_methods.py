"""A wrong method on an endpoint answers 405 with an Allow header, never 404 (DESIGN §4)."""
import re

import pytest

from harness import api
from meshdns.api.app import ROUTE_TABLES


def put_only_paths():
    methods: dict[str, set[str]] = {}
    for table in ROUTE_TABLES:
        for route in table:
            methods.setdefault(route.path, set()).add(route.method)
    return sorted(re.sub(r"\{[^}]*\}", "x", path) for path, m in methods.items() if m == {"PUT"})


def test_the_put_only_endpoints_are_found():
    paths = put_only_paths()
    assert "/v1/agent/service/register" in paths and "/v1/catalog/deregister" in paths and len(paths) >= 12


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    from harness import ServerThread, make_config
    tmp = tmp_path_factory.mktemp("methods")
    (tmp / "zones").mkdir()
    server = ServerThread(make_config(tmp, zones=tmp / "zones")).start()
    yield server
    server.stop()


@pytest.mark.parametrize("path", put_only_paths())
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_a_wrong_method_on_a_put_only_endpoint_is_405(srv, path, method):
    reply = api(srv.http, method, path)
    assert reply.status == 405, (method, path, reply)
    assert reply.headers["Allow"] == "PUT"


def test_a_registered_service_is_still_read_by_id(srv):
    body = {"ID": "registered", "Name": "web", "Address": "127.0.0.5"}
    assert api(srv.http, "PUT", "/v1/agent/service/register", body).status == 200
    assert api(srv.http, "GET", "/v1/agent/service/registered").json()["ID"] == "registered"
    assert api(srv.http, "GET", "/v1/agent/service/ghost").status == 404
