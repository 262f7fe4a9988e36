"""Several `meshdns serve` replicas on one real 3-member etcd: one catalog, whichever replica is asked.

Writes through one replica are answered by every replica (API and DNS) with
the same X-Consul-Index and entry indexes; blocking queries carry an index
from one replica to another; checks are run by exactly one live replica and
move when it dies, without dropping out of answers; the leader moves too.
"""
from __future__ import annotations

import threading

from etcd_cluster import etcd  # noqa: F401 (fixture)
from harness import FlipHttpServer, api, metric_samples, query, rrset_values, wait_until
from replica_set import replica_sets  # noqa: F401 (fixture)


def register(proc, sid: str, address: str, *, name: str = "web", **extra):
    return api(proc.http, "PUT", "/v1/agent/service/register",
               {"ID": sid, "Name": name, "Address": address, "Port": 80, **extra})


def catalog(proc, name: str = "web"):
    reply = api(proc.http, "GET", f"/v1/catalog/service/{name}")
    return reply.index, sorted((e["ServiceID"], e["ServiceAddress"], e["CreateIndex"], e["ModifyIndex"])
                               for e in reply.json())


def checks(proc, name: str = "web"):
    reply = api(proc.http, "GET", f"/v1/health/checks/{name}")
    return reply.index, sorted((c["CheckID"], c["Status"], c["Output"], c["ModifyIndex"]) for c in reply.json())


def split_indexes(proc, name: str = "front"):
    reply = api(proc.http, "GET", f"/v1/config/service-splitter/{name}")
    assert reply.status == 200, reply
    return reply.index, reply.json()["CreateIndex"], reply.json()["ModifyIndex"]


def dns(proc, name: str = "web") -> list[str]:
    return sorted(rrset_values(query(proc.dns_port, f"{name}.service.consul")))


def same_everywhere(rs, read):
    """Wait until every live replica gives the same answer (X-Consul-Index included); that answer."""
    def agreed():
        answers = [read(p) for p in rs.live]
        return answers[0] if all(a == answers[0] for a in answers) else False
    return wait_until(agreed, 30, 0.05, what="every replica answers the same")


def test_a_write_through_one_replica_is_answered_by_all(etcd, replica_sets):
    rs = replica_sets(etcd).start_all()
    r0, r1, r2 = rs.procs
    assert register(r0, "web-1", "127.2.0.1", Check={"TTL": "1h", "Status": "passing"}).status == 200
    index, entries = catalog(r0)                      # read-your-writes on the replica written through
    assert [e[:2] for e in entries] == [("web-1", "127.2.0.1")]
    assert same_everywhere(rs, catalog) == (index, entries)   # same X-Consul-Index, same Create/ModifyIndex
    assert all(dns(p) == ["127.2.0.1"] for p in rs.procs)

    # a TTL update through any replica (owner or not) is stored and shown everywhere
    for via in rs.procs:
        assert api(via.http, "PUT", "/v1/agent/check/fail/service:web-1?note=down").status == 200
        failed = same_everywhere(rs, checks)
        assert failed[1] == [("service:web-1", "critical", "down", failed[0])]
        assert all(dns(p) == [] for p in rs.procs)
        assert api(via.http, "PUT", "/v1/agent/check/pass/service:web-1").status == 200
        passed = same_everywhere(rs, checks)
        assert passed[1][0][1] == "passing" and passed[0] > failed[0]
        assert all(dns(p) == ["127.2.0.1"] for p in rs.procs)

    # config entries and catalog registrations too
    assert register(r1, "shop-1", "127.2.1.1", name="shop").status == 200
    split = {"Kind": "service-splitter", "Name": "front", "Splits": [{"Weight": 100, "Service": "shop"}]}
    assert api(r2.http, "PUT", "/v1/config", split).status == 200
    entry = same_everywhere(rs, split_indexes)
    assert entry[1] == entry[2] > index
    assert all(dns(p, "front") == ["127.2.1.1"] for p in rs.procs)
    assert api(r0.http, "PUT", "/v1/catalog/register", {"Node": "ext", "Address": "127.2.8.8",
                                                       "Service": {"Service": "ext", "Port": 1}}).status == 200
    same_everywhere(rs, lambda p: catalog(p, "ext"))
    # the agent view is the shared state on every replica (one agent node)
    agents = same_everywhere(rs, lambda p: sorted(api(p.http, "GET", "/v1/agent/services").json()))
    assert agents == ["shop-1", "web-1"]

    assert api(r2.http, "PUT", "/v1/agent/service/deregister/web-1").status == 200
    assert same_everywhere(rs, catalog)[1] == []
    assert all(dns(p) == [] for p in rs.procs)


def test_a_blocking_query_carries_its_index_from_one_replica_to_another(etcd, replica_sets):
    rs = replica_sets(etcd).start_all()
    r0, r1, r2 = rs.procs
    assert register(r0, "web-1", "127.2.0.1").status == 200
    index = catalog(r0)[0]
    result = {}

    def blocking():
        result["reply"] = api(r1.http, "GET", f"/v1/catalog/service/web?index={index}&wait=60s", timeout=90)

    waiter = threading.Thread(target=blocking)
    waiter.start()
    # the waiter parks on r1 (it has applied r0's index, or waits until it has); a write through r2 ends it
    wait_until(lambda: any(v for (name, _), v in metric_samples(r1.http).items()
                           if name == "meshdns_http_blocking_queries"), 30,
               what="the query parked on r1")
    assert register(r2, "web-2", "127.2.0.2").status == 200
    waiter.join(90)
    reply = result["reply"]
    assert reply.status == 200 and reply.index > index
    assert sorted(e["ServiceID"] for e in reply.json()) == ["web-1", "web-2"]
    assert reply.index == catalog(r2)[0]               # the same index the writer's replica reports


def owned(proc) -> int:
    return int(metric_samples(proc.http)[("meshdns_checks_run_here", (("owner", "registrations"),))])


def test_a_dead_replicas_checks_and_leadership_move_to_the_others(etcd, replica_sets):
    target = FlipHttpServer(200)
    try:
        rs = replica_sets(etcd).start_all()
        # replica IDs are random, so the shares are too: with 36 checks the chance that one of three
        # replicas owns none is 3 x (2/3)^36, about 1e-6 (with 12 it was 2 %)
        n = 36
        for i in range(n):
            assert register(rs.procs[i % 3], f"web-{i}", f"127.2.0.{i + 1}",
                            Check={"HTTP": target.url, "Interval": "500ms", "Status": "critical"}).status == 200
        passing = [("passing", n)]
        assert wait_until(lambda: same_everywhere(rs, statuses) == passing, 60, what="every check passing")
        shares = [owned(p) for p in rs.procs]
        assert sum(shares) == n and all(shares), shares   # each check run by exactly one replica, all take part
        leader = rs.leader(rs.procs[0])
        dead = next(p for p in rs.procs if rs.address(p) == leader)   # kill the leader: both duties move
        dead.kill()
        survivors = rs.live
        new_leader = rs.wait_members(2)
        assert new_leader != leader
        seen = []   # what the survivors answered while the checks moved: never one missing or flapping

        def moved():
            seen.extend(statuses(p) for p in survivors)
            return sum(owned(p) for p in survivors) == n
        wait_until(moved, 60, 0.1, what="the dead replica's checks moved")
        assert seen and all(answer == passing for answer in seen), seen
        target.status = 500                                      # every check, moved ones included, sees it
        wait_until(lambda: all(statuses(p) == [("critical", n)] for p in survivors), 60, 0.1,
                   what="all checks (the moved ones too) report the failure")
        assert all(dns(p) == [] for p in survivors)
        target.status = 200
        wait_until(lambda: all(statuses(p) == passing for p in survivors), 60, 0.1, what="passing again")
        assert all(len(dns(p)) == n for p in survivors)
    finally:
        target.close()


def statuses(proc):
    """(status, count) of the web checks: every registered check is there, whoever runs it."""
    found = api(proc.http, "GET", "/v1/health/checks/web").json()
    counts: dict[str, int] = {}
    for c in found:
        counts[c["Status"]] = counts.get(c["Status"], 0) + 1
    return sorted(counts.items())


def owner_of_the_check(rs) -> int:
    """Index of the replica that runs the only registered check (the others follow it)."""
    def found():
        shares = [owned(p) for p in rs.procs]
        return shares.index(1) + 1 if sorted(shares) == [0, 0, 1] else False
    return wait_until(found, 30, 0.1, what="one replica runs the check") - 1


def test_ttl_passes_through_replicas_that_do_not_run_the_check_keep_it_alive(etcd, replica_sets):
    rs = replica_sets(etcd).start_all()
    assert register(rs.procs[0], "web-1", "127.2.0.1", Check={"TTL": "4s", "Status": "passing"}).status == 200
    owner = owner_of_the_check(rs)
    others = [p for i, p in enumerate(rs.procs) if i != owner]
    seen = []
    for beat in range(24):   # 12 s of passes, every 0.5 s, through the two replicas that do not run it
        assert api(others[beat % 2].http, "PUT", "/v1/agent/check/pass/service:web-1").status == 200
        seen.extend(checks(p)[1][0][1] for p in rs.procs)
        threading.Event().wait(0.5)
    assert set(seen) == {"passing"}, seen          # the owner's TTL never ran out
    # no more passes: the owner lets it expire, and every replica shows it
    wait_until(lambda: all(checks(p)[1][0][1:3] == ("critical", "TTL expired") for p in rs.procs), 30, 0.1,
               what="the TTL expired")


def test_the_leader_deregisters_a_service_critical_for_too_long_whoever_runs_its_check(etcd, replica_sets):
    target = FlipHttpServer(500)
    try:
        rs = replica_sets(etcd).start_all()
        leader = rs.leader(rs.procs[0])
        for i in range(6):   # checks spread over the replicas: most run where the leader is not
            assert register(rs.procs[i % 3], f"web-{i}", f"127.2.0.{i + 1}",
                            Check={"HTTP": target.url, "Interval": "500ms", "Status": "passing",
                                   "DeregisterCriticalServiceAfter": "1s"}).status == 200
        assert register(rs.procs[1], "keep", "127.2.1.1", name="keep").status == 200
        wait_until(lambda: all(catalog(p)[1] == [] for p in rs.procs), 60, 0.1, what="every web instance reaped")
        assert all(catalog(p, "keep")[1] for p in rs.procs)
        reaped = [p.stderr().count("critical past DeregisterCriticalServiceAfter") for p in rs.procs]
        assert reaped[[rs.address(p) for p in rs.procs].index(leader)] == sum(reaped) >= 6, reaped
    finally:
        target.close()


def test_a_quiet_cluster_writes_nothing(etcd, replica_sets):
    target = FlipHttpServer(200)
    try:
        rs = replica_sets(etcd).start_all()
        for i in range(6):
            assert register(rs.procs[i % 3], f"web-{i}", f"127.2.0.{i + 1}",
                            Check={"HTTP": target.url, "Interval": "300ms", "Status": "critical"}).status == 200
        wait_until(lambda: all(statuses(p) == [("passing", 6)] for p in rs.procs), 60, 0.1, what="all passing")
        index = same_everywhere(rs, catalog)[0]
        revision = same_everywhere(rs, applied)   # the last change under this set's prefix
        probes = len(target.requests)
        # membership leases are refreshed, checks are probed, nothing changes: nothing is written
        wait_until(lambda: len(target.requests) >= probes + 6 * 10, 60, 0.1, what="ten more rounds of probes")
        threading.Event().wait(2 * 2)   # and two more member TTLs of lease refreshes
        assert [applied(p) for p in rs.procs] == [revision] * 3
        assert same_everywhere(rs, catalog)[0] == index
    finally:
        target.close()


def applied(proc) -> int:
    return int(metric_samples(proc.http)[("meshdns_store_revision", ())])


def test_a_write_is_checked_against_what_another_replica_acknowledged_just_before(etcd, replica_sets):
    rs = replica_sets(etcd).start_all()
    r0, r1 = rs.procs[0], rs.procs[1]
    for i in range(20):   # each split names a service whose registration r1 has barely (or not yet) seen
        assert register(r0, f"svc-{i}", f"127.2.2.{i + 1}", name=f"svc{i}").status == 200
        split = {"Kind": "service-splitter", "Name": f"front{i}", "Splits": [{"Weight": 100, "Service": f"svc{i}"}]}
        reply = api(r1.http, "PUT", "/v1/config", split)
        assert reply.status == 200, reply
        reply = api(r1.http, "PUT", "/v1/agent/check/register",
                    {"Name": "extra", "TTL": "1h", "ServiceID": f"svc-{i}", "CheckID": f"extra-{i}"})
        assert reply.status == 200, reply


def test_a_prepared_query_created_through_one_replica_runs_on_all(etcd, replica_sets):
    rs = replica_sets(etcd).start_all()
    r0, r1, r2 = rs.procs
    assert register(r1, "web-1", "127.2.0.1").status == 200
    created = api(r0.http, "POST", "/v1/query", {"Name": "front", "Service": {"Service": "web"}})
    assert created.status == 200, created
    qid = created.json()["ID"]

    def query_indexes(proc):
        reply = api(proc.http, "GET", f"/v1/query/{qid}")
        assert reply.status == 200, reply
        (q,) = reply.json()
        return q["Name"], q["CreateIndex"], q["ModifyIndex"]

    name, create, modify = same_everywhere(rs, query_indexes)
    assert name == "front" and create == modify > 0
    assert all(sorted(rrset_values(query(p.dns_port, "front.query.consul"))) == ["127.2.0.1"] for p in rs.procs)
    assert api(r2.http, "DELETE", f"/v1/query/{qid}").status == 200
    wait_until(lambda: all(api(p.http, "GET", f"/v1/query/{qid}").status == 404 for p in rs.procs), 30,
               what="the query gone everywhere")
