import pytest

from harness import ServerThread, make_config


@pytest.fixture
def server(tmp_path):
    """The real server on the shipped zones/, 127.0.0.1 port 0."""
    srv = ServerThread(make_config(tmp_path)).start()
    yield srv
    srv.stop()


@pytest.fixture
def start_server(tmp_path):
    """Start servers with config overrides; all are stopped at the end."""
    started = []

    def start(overrides=None, *, zones=None):
        if any(s._thread.is_alive() for s in started) and "data_dir" not in (overrides or {}):
            # one store per data dir and process: a server beside a running one gets its own
            overrides = {**(overrides or {}), "data_dir": str(tmp_path / f"data-{len(started)}")}
        srv = ServerThread(make_config(tmp_path, overrides, zones=zones)).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def upstreams():
    """Start scripted upstream DNS servers (tests/upstream.py); all are stopped at the end."""
    from upstream import Upstream

    started = []

    def start(**kwargs):
        up = Upstream(**kwargs).start()
        started.append(up)
        return up

    yield start
    for up in started:
        up.stop()
