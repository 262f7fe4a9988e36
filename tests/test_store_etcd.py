"""What only the etcd backend has: a gRPC channel per endpoint, TLS with client certificates, passwords."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from aetcd import rpc

from etcd_cluster import NO_ETCD, EtcdCluster, etcd_binary
from meshdns.store import Put, StoreError, StoreUnavailable
from meshdns.store.etcd import EtcdKV, grpc_targets
from test_hardening_http import certs, openssl  # noqa: F401 (fixture)


def test_each_endpoint_becomes_a_grpc_target_of_its_own():
    assert grpc_targets(["http://127.0.0.1:2379", "127.0.0.2:22379"]) == (
        ["ipv4:127.0.0.1:2379", "ipv4:127.0.0.2:22379"], False)
    assert grpc_targets(["https://[::1]:2379"]) == (["ipv6:[::1]:2379"], True)
    assert grpc_targets(["https://etcd-client.meshdns.svc:2379"]) == (["dns:///etcd-client.meshdns.svc:2379"], True)
    assert grpc_targets(["https://etcd-0.example:2379", "https://[::1]:2379", "https://127.0.0.3"]) == (
        ["dns:///etcd-0.example:2379", "ipv6:[::1]:2379", "ipv4:127.0.0.3:2379"], True)
    for bad, words in ([[], "at least one"], [["http://127.0.0.1:1", "https://127.0.0.2:1"], "mix http"],
                       [["ftp://x:1"], "not http"]):
        with pytest.raises(ValueError, match=words) as raised:
            grpc_targets(bad)
        assert str(raised.value).startswith("endpoints:")


def test_bad_credentials_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="username and password"):
        EtcdKV(["127.0.0.1:2379"], username="root")
    with pytest.raises(ValueError, match="cert_file and key_file"):
        EtcdKV(["127.0.0.1:2379"], cert_file=str(tmp_path / "c.crt"))
    with pytest.raises(ValueError, match=f"ca_file: cannot read {tmp_path}/missing.crt"):
        EtcdKV(["https://127.0.0.1:2379"], ca_file=str(tmp_path / "missing.crt"))


@pytest.fixture
def tls_etcd(certs, tmp_path):  # noqa: F811
    """One member that speaks only TLS, wants a client certificate, and has passwords switched on."""
    if etcd_binary() is None:
        pytest.skip(NO_ETCD)
    sign(certs, "etcd", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    sign(certs, "client", "extendedKeyUsage=clientAuth\n")
    cluster = EtcdCluster(tmp_path, size=1, tls=certs).start()
    asyncio.run(_enable_auth(cluster, certs))
    yield cluster
    cluster.stop()


def sign(certs, name: str, extensions: str) -> None:
    """<name>.key and <name>.crt signed by the test CA."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=certs)
    (certs / f"{name}.ext").write_text(extensions)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=certs)


async def _enable_auth(cluster: EtcdCluster, certs) -> None:
    credentials = grpc.ssl_channel_credentials((certs / "ca.crt").read_bytes(), (certs / "client.key").read_bytes(),
                                               (certs / "client.crt").read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{cluster.members[0].client_port}", credentials) as channel:
        auth = rpc.AuthStub(channel)
        await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password="s3cret"), timeout=10)
        await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
        await auth.AuthEnable(rpc.AuthEnableRequest(), timeout=10)


async def test_tls_with_a_client_certificate_and_a_password(tls_etcd, certs):  # noqa: F811
    files = {"ca_file": str(certs / "ca.crt"), "cert_file": str(certs / "client.crt"),
             "key_file": str(certs / "client.key")}
    kv = EtcdKV(tls_etcd.endpoints, timeout=5, username="root", password="s3cret", **files)
    wrong = EtcdKV(tls_etcd.endpoints, timeout=5, username="root", password="guess", **files)
    no_cert = EtcdKV(tls_etcd.endpoints, timeout=3, username="root", password="s3cret", ca_file=files["ca_file"])
    try:
        ok, revision = await kv.txn([], [Put(b"/tls/a", b"1")])
        assert ok
        entries, _ = await kv.list(b"/tls/")
        assert [(e.key, e.value) for e in entries] == [(b"/tls/a", b"1")]
        watch = await kv.watch(b"/tls/", revision)
        try:
            assert (await asyncio.wait_for(watch.__anext__(), 20)).revision == revision
        finally:
            await watch.aclose()
        with pytest.raises(StoreError, match="authentication failed"):
            await wrong.list(b"/tls/")
        with pytest.raises(StoreError):  # the server wants a client certificate
            await no_cert.list(b"/tls/")

        tls_etcd.kill(0)  # a restarted member has forgotten every auth token: the client logs in again
        tls_etcd.restart(0)  # (its status page now wants a login too: the writes below tell when it is back)
        for _ in range(100):
            try:
                ok, _ = await kv.txn([], [Put(b"/tls/b", b"2")])
                break
            except StoreError as exc:
                assert "auth" not in str(exc)
                await asyncio.sleep(0.2)
        assert ok and [e.key for e in (await kv.list(b"/tls/"))[0]] == [b"/tls/a", b"/tls/b"]
    finally:
        for client in (kv, wrong, no_cert):
            await client.close()


@pytest.fixture
def tls_members(certs, tmp_path):  # noqa: F811
    """Three members that speak only TLS on 127.0.0.1, .2 and .3, each with a certificate for its own address only."""
    if etcd_binary() is None:
        pytest.skip(NO_ETCD)
    hosts = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    for i, host in enumerate(hosts):
        sign(certs, f"m{i}", f"subjectAltName=IP:{host}\nextendedKeyUsage=serverAuth,clientAuth\n")
    sign(certs, "client", "extendedKeyUsage=clientAuth\n")
    cluster = EtcdCluster(tmp_path, tls=certs, hosts=hosts).start()
    yield cluster
    cluster.stop()


async def test_one_tls_client_of_members_on_their_own_addresses_writes_while_one_is_killed(tls_members):
    """Each member's certificate is checked against that member's own address, and the client moves
    on to the next member when the one it talks to, or the leader, is killed; a client that starts while
    a member is down never sends it a write."""
    cluster = tls_members
    kv = cluster.client(timeout=3)

    async def write(key: bytes) -> None:
        for _ in range(200):  # a write whose outcome is unknown (the member died under it) is retried
            try:
                ok, _ = await kv.txn([], [Put(key, b"1")])
                assert ok
                return
            except StoreUnavailable:
                await asyncio.sleep(0.05)
        raise AssertionError(f"{key!r} never acknowledged")

    try:
        written = [b"/own/before"]
        await write(written[0])
        for victim in range(3):  # one of them is the member the client talks to, one leads
            cluster.kill(victim)
            for i in range(10):
                written.append(b"/own/m%d-down/%02d" % (victim, i))
                await write(written[-1])
            assert [e.key for e in (await kv.list(b"/own/"))[0]] == sorted(written)
            fresh = cluster.client(timeout=3)
            try:
                for i in range(10):
                    written.append(b"/own/m%d-down/fresh-%02d" % (victim, i))
                    assert (await fresh.txn([], [Put(written[-1], b"1")]))[0]
                assert [e.key for e in (await fresh.list(b"/own/"))[0]] == sorted(written)
            finally:
                await fresh.close()
            cluster.restart(victim)
            await asyncio.to_thread(cluster.wait_healthy)
    finally:
        await kv.close()
