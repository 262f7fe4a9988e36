"""The resolver: (qname, qtype, Snapshot, options, rng) -> Answer. Pure.

It works in two steps. `plan` is deterministic: it turns a question and a
snapshot into a Plan whose records are already in wire form and grouped into
units that move together when shuffled (an SRV record and its target's A
record). It reads the snapshot through a View, so the plan carries exactly
what it was built from. `realize` applies the only randomness (weighting.choose):
choosing a split target and the weighted shuffle.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..catalog import queries
from ..catalog.client_class import NOBODY
from ..catalog.intentions import intention_decision
from ..catalog.locality import SAME_ZONE_PRIORITY, same_zone
from ..catalog.model import Instance, Split
from ..catalog.rules import healthy, split_sides
from ..catalog.snapshot import Snapshot
from ..catalog.view import Dep, View
from . import names, rdata
from .names import AddrLookup, ApexLookup, NodeLookup, QueryLookup, ReverseLookup, ServiceLookup, UnknownLookup
from .weighting import Choices, choose, scale_shares
from .wire import NOERROR, NXDOMAIN, own_domain, read_name


@dataclass(frozen=True, slots=True)
class Record:
    """One RR. name None = the question name (echoed as asked, compressed to it)."""

    name: str | None
    rtype: int
    ttl: int
    rdata: bytes


@dataclass(frozen=True, slots=True)
class Unit:
    weight: float
    answer: tuple[Record, ...]
    additional: tuple[Record, ...] = ()


@dataclass(frozen=True, slots=True)
class Group:
    """A set of units answered together; a split A answer picks one group, and so does a service
    whose instances are hostnames (one CNAME per answer)."""

    weight: float
    units: tuple[Unit, ...]
    label: str = ""
    prefix: tuple[Record, ...] = ()   # answer records before the shuffled units: a CNAME (and its chain)
    same_zone: bool | None = None     # for a client with a zone: did it prefer that zone (None: no zone)


@dataclass(frozen=True, slots=True)
class Plan:
    rcode: int = NOERROR
    groups: tuple[Group, ...] = ()
    authority: tuple[Record, ...] = ()
    limit: int = 0
    authoritative: bool = True
    forward: bool = False       # not ours: hand to the forwarder
    split: str = ""             # split name, for the answers-by-target counter
    deps: tuple[Dep, ...] = ()  # what the plan was read from (catalog.view)
    soa_domain: str = ""        # authority is our SOA for this domain (its serial is the catalog version)
    kind: str = ""              # what kind of name was asked (a metrics label)
    denied: tuple[str, str] = ()  # (source, destination) when intentions hid the name from the client


@dataclass(frozen=True, slots=True)
class Answer:
    rcode: int = NOERROR
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    authoritative: bool = True
    forward: bool = False
    split: str = ""
    target: str = ""


@dataclass(frozen=True, slots=True)
class Soa:
    min_ttl: int = 0
    refresh: int = 3600
    retry: int = 600
    expire: int = 86400


@dataclass(frozen=True, slots=True)
class ResolverOptions:
    domains: tuple[str, ...] = ("consul.",)
    only_passing: bool = False
    a_record_limit: int = 0
    node_ttl: int = 0
    service_ttl: tuple[tuple[str, float], ...] = (("*", 0.0),)
    soa: Soa = field(default_factory=Soa)
    ns_addresses: tuple[str, ...] = ()
    peer_datacenters: tuple[str, ...] = ()   # [[peer]] order: a prepared query's NearestN takes the first N
    prefer_same_zone: bool = False   # answers keep to the client's zone (DESIGN §10)
    same_zone_min: int = 1           # ... when it has at least this many healthy instances
    enforce_intentions: bool = False  # a name the client may not reach does not exist for it
    intentions_default: str = "allow"

    def ttl_for_service(self, service: str) -> int:
        """Exact name, then the longest matching "prefix*", then "*" (Consul's rule)."""
        best, best_len = None, -1
        for pattern, ttl in self.service_ttl:
            if pattern == service:
                return int(ttl)
            if pattern.endswith("*") and service.startswith(pattern[:-1]) and len(pattern) > best_len:
                best, best_len = ttl, len(pattern)
        return int(best) if best is not None else 0


# ---------------------------------------------------------------------------
# realize


def realize(plan: Plan, rng: random.Random, soa: Record | None = None) -> Answer:
    """One answer to the plan; `soa` is the record for a plan whose authority is our SOA."""
    groups = plan.groups
    g, _, order = choose(Choices.of([g.weight for g in groups], [[u.weight for u in g.units] for g in groups]), rng)
    chosen = groups[g] if groups else Group(1.0, ())
    units = [chosen.units[i] for i in order]
    if plan.limit:
        units = units[:plan.limit]
    answer = chosen.prefix + tuple(r for u in units for r in u.answer)
    additional = tuple(r for u in units for r in u.additional)
    authority = (soa,) if plan.soa_domain and soa is not None else plan.authority
    return Answer(plan.rcode, answer, authority, additional, plan.authoritative, plan.forward, plan.split,
                  chosen.label)


def resolve(qname: str, qtype: int, snap: Snapshot, opts: ResolverOptions, rng: random.Random, *,
            client: Client = NOBODY) -> Answer:
    p = plan(qname, qtype, snap, opts, client=client)
    return realize(p, rng, soa_record(p.soa_domain, snap, opts) if p.soa_domain else None)


# ---------------------------------------------------------------------------
# plan


class Client(Protocol):
    """Who asks, as far as answers may differ by it (a dns.clients.ClientClass)."""

    zone: str                  # "" when unknown
    services: frozenset[str]   # its service identities (none: the source "*")


def plan(qname: str, qtype: int, snap: Snapshot, opts: ResolverOptions, *, client: Client = NOBODY) -> Plan:
    """qname: lower-case FQDN with trailing dot."""
    view = View(snap)
    kind: list[str] = ["unknown"]
    p = _plan(qname, qtype, view, opts, kind, client=client)
    return Plan(p.rcode, p.groups, p.authority, p.limit, p.authoritative, p.forward, p.split,
                tuple(view.deps), p.soa_domain, "split" if p.split else kind[0], p.denied)


def _plan(qname: str, qtype: int, snap: View, opts: ResolverOptions, kind: list,
          chain: tuple[str, ...] = (), *, client: Client = NOBODY) -> Plan:
    """chain: the names whose CNAMEs led here (a CNAME is followed at most MAX_CHASE times, never round a loop)."""
    domain = own_domain(qname, opts.domains)
    zone = snap.zone_for(qname)
    if zone is not None and (domain is None or len(zone.zone.origin) > len(domain)):
        kind[0] = "zone"
        return _zone(qname, qtype, zone)
    if domain is None:
        rev = names.parse_reverse(qname)
        if rev is not None and rev.ip is not None:
            found = _reverse(rev, qtype, snap, opts)
            if found is not None:
                kind[0] = "reverse"
                return found
        kind[0] = "forward"
        if qtype == rdata.ANY:
            # RFC 8482 §4.2: never fan ANY out upstream (amplification); a synthesized HINFO says so
            return Plan(groups=_single([Record(None, rdata.HINFO, 3600, rdata.txt("RFC8482", ""))]),
                        authoritative=False)
        return Plan(forward=True, authoritative=False)
    lookup = names.parse_own(qname, domain)
    kind[0] = type(lookup).__name__.removesuffix("Lookup").lower()
    if isinstance(lookup, ServiceLookup):
        if not chain and opts.enforce_intentions:
            denied = _denied(lookup.service, client, snap, opts, domain)
            if denied is not None:
                return denied
        zone = client.zone if opts.prefer_same_zone else ""
        chain += (qname,)
        return _service(lookup, qtype, snap, opts, lambda name, qt: _chase(name, qt, snap, opts, chain, client),
                        zone)
    if isinstance(lookup, NodeLookup):
        return _node(lookup, qtype, snap, opts)
    if isinstance(lookup, AddrLookup):
        return _addr(lookup, qtype, snap, opts)
    if isinstance(lookup, QueryLookup):
        chain += (qname,)
        return _query(lookup, qtype, snap, opts, lambda name, qt: _chase(name, qt, snap, opts, chain, client),
                      client, len(chain) == 1)
    if isinstance(lookup, ApexLookup):
        return _apex(lookup, qtype, snap, opts)
    assert isinstance(lookup, UnknownLookup)
    return _negative(NXDOMAIN, domain)


MAX_CHASE = 3  # CNAME hops followed inside our own names (Consul's recursion limit)


def _chase(target: str, qtype: int, snap: View, opts: ResolverOptions, chain: tuple[str, ...],
           client: Client) -> tuple[Group, ...]:
    """The answer groups for a CNAME target we serve ourselves (our domains, our zones), owners
    spelled out; () for names we do not serve, and for names without data of that type."""
    name = target.lower() if target.endswith(".") else target.lower() + "."
    if len(chain) > MAX_CHASE or name in chain:
        return ()
    if own_domain(name, opts.domains) is None and snap.zone_for(name) is None:
        return ()
    p = _plan(name, qtype, snap, opts, [""], chain, client=client)
    if p.forward or p.rcode != NOERROR:
        return ()
    return tuple(Group(g.weight, tuple(Unit(u.weight, _owned(u.answer, name), _owned(u.additional, name))
                                       for u in g.units), g.label, _owned(g.prefix, name), g.same_zone)
                 for g in p.groups)


def _owned(records: tuple[Record, ...], owner: str) -> tuple[Record, ...]:
    """Records answering `owner`, with the question-name placeholder replaced by it."""
    return tuple(r if r.name is not None else Record(owner, r.rtype, r.ttl, r.rdata) for r in records)


def soa_record(domain: str, snap: Snapshot | View, opts: ResolverOptions) -> Record:
    """Our SOA as it stands in this snapshot (the serial is the catalog version)."""
    s = opts.soa
    return Record(domain, rdata.SOA, s.min_ttl,
                  rdata.soa("ns." + domain, "hostmaster." + domain, snap.version,
                            s.refresh, s.retry, s.expire, s.min_ttl))


def _negative(rcode: int, domain: str) -> Plan:
    """The SOA is left to whoever renders the answer: its serial moves with every catalog version, the
    rest of a negative answer does not."""
    return Plan(rcode=rcode, soa_domain=domain)


def _denied(destination: str, client: Client, snap: View, opts: ResolverOptions, domain: str) -> Plan | None:
    """NXDOMAIN, exactly as for a name that does not exist, when intentions keep the client from the
    destination service; None when it may reach it. Checked before the service is read, so a denial
    depends only on the intentions entry."""
    decision = intention_decision(snap.intentions, client.services, destination, default=opts.intentions_default)
    if decision.allowed:
        return None
    return Plan(rcode=NXDOMAIN, soa_domain=domain, denied=(decision.source, destination))


def _single(records: list[Record]) -> tuple[Group, ...]:
    return (Group(1.0, tuple(Unit(1.0, (r,)) for r in records)),) if records else ()


def _known_dc(dc: str | None, snap: View) -> str | None:
    """The datacenter to search, or None when the label names one we do not know."""
    if dc is None:
        return snap.datacenter
    return dc if dc in snap.datacenters else None


# -- services ---------------------------------------------------------------


def _service(lk: ServiceLookup, qtype: int, snap: View, opts: ResolverOptions, chase: Chase, zone: str) -> Plan:
    """zone: the client's, when answers prefer it ("" otherwise)."""
    dc = _known_dc(lk.datacenter, snap)
    if dc is None:
        return _negative(NXDOMAIN, lk.domain)
    if lk.srv_only and qtype != rdata.SRV:
        # the name exists when its SRV answer does; other types get NODATA (RFC 2308), not Consul's NXDOMAIN
        srv = _service(lk, rdata.SRV, snap, opts, chase, "")
        return srv if srv.rcode == NXDOMAIN else _negative(NOERROR, lk.domain)
    split = snap.splits.get(lk.service) if dc == snap.datacenter and not lk.tag else None
    if split is not None:
        return _split(split, lk, qtype, snap, opts, chase, zone)
    insts = healthy(snap.services.get((dc, lk.service), ()), only_passing=opts.only_passing, tag=lk.tag)
    if not insts:
        return _negative(NXDOMAIN, lk.domain)
    return _instances(insts, qtype, snap, opts, lk.domain, opts.ttl_for_service(lk.service), chase, zone)


def _instances(insts, qtype: int, snap: View, opts: ResolverOptions, domain: str, ttl: int,
               chase: Chase, zone: str) -> Plan:
    """The answer with these instances, weighted-shuffled (a service's, or a prepared query's), kept to
    the client's `zone` as locality.same_zone says."""
    local = same_zone(snap, insts, zone, minimum=opts.same_zone_min)
    if qtype == rdata.SRV:
        groups = _srv_groups(insts, snap, domain, ttl, [float(_weight(i)) for i in insts], None, "", chase,
                             local.priorities, local.same_zone)
    else:
        groups = _address_groups(local.addresses, qtype, snap, ttl, 1.0, "", chase, local.same_zone)
    if not groups:
        return _negative(NOERROR, domain)
    return Plan(groups=tuple(groups), limit=_limit(qtype, opts))


Chase = Callable[[str, int], tuple[Group, ...]]


def _weight(inst: Instance) -> int:
    return inst.weights.for_health(inst.health)


def _limit(qtype: int, opts: ResolverOptions) -> int:
    return opts.a_record_limit if qtype in (rdata.A, rdata.AAAA, rdata.ANY) else 0


def _address_records(owner: str | None, address: str, qtype: int, ttl: int) -> list[Record]:
    """A/AAAA (or CNAME for a hostname) for one address, as qtype asks."""
    version = names.ip_version(address) if address else -1
    if version == 4 and qtype in (rdata.A, rdata.ANY):
        return [Record(owner, rdata.A, ttl, rdata.a(address))]
    if version == 6 and qtype in (rdata.AAAA, rdata.ANY):
        return [Record(owner, rdata.AAAA, ttl, rdata.aaaa(address))]
    if version == 0 and qtype in (rdata.A, rdata.AAAA, rdata.ANY, rdata.CNAME):
        try:
            return [Record(owner, rdata.CNAME, ttl, rdata.name(address))]
        except (ValueError, UnicodeEncodeError):
            return []
    return []


def _address_groups(insts, qtype, snap, ttl, weight, label, chase: Chase, local: bool | None = None) -> list[Group]:
    """A/AAAA/ANY/CNAME answer groups for healthy instances (total weight `weight`).

    A CNAME never stands beside other records at one name (RFC 1034): when any instance has an
    IP, the IP instances answer alone, as Consul does, and hostname instances serve SRV only. A
    service of hostnames answers one CNAME, chosen by instance weight, followed by the target's
    records when the target is a name we serve ourselves.
    """
    addressed = [(i, snap.instance_address(i)) for i in insts]
    ips = [(i, a) for i, a in addressed if names.ip_version(a) in (4, 6)]
    if ips:
        units = [Unit(float(_weight(i)), tuple(_address_records(None, a, qtype, ttl))) for i, a in ips]
        units = [u for u in units if u.answer]
        if len({u.answer for u in units}) < len(units):
            units = _dedupe(units)
        return [Group(weight, tuple(units), label, (), local)] if units else []
    if qtype not in (rdata.A, rdata.AAAA, rdata.ANY, rdata.CNAME):
        return []
    hosts = [(i, a) for i, a in addressed if a]
    total = sum(_weight(i) for i, _ in hosts)
    groups = []
    for inst, host in hosts:
        cname = _address_records(None, host, rdata.CNAME, ttl)
        if not cname:
            continue
        share = weight * (_weight(inst) / total if total > 0 else 1 / len(hosts))
        inner = chase(host, qtype) if qtype != rdata.CNAME else ()
        inner_total = sum(g.weight for g in inner)
        groups += [Group(share * g.weight / inner_total, g.units, label, (cname[0],) + g.prefix, local)
                   for g in inner if inner_total > 0] or [Group(share, (), label, (cname[0],), local)]
    return groups


def _dedupe(units: list[Unit]) -> list[Unit]:
    """Two instances on one IP give one A record, carrying both weights."""
    merged: dict[tuple, Unit] = {}
    for u in units:
        prev = merged.get(u.answer)
        merged[u.answer] = u if prev is None else Unit(prev.weight + u.weight, u.answer)
    return list(merged.values())


def _srv_groups(insts, snap, domain, ttl, weights, srv_weights, label, chase: Chase, priorities=None,
                local: bool | None = None) -> list[Group]:
    """One group of SRV units (shuffled by `weights`; SRV weight field `srv_weights`, else the instance's;
    priority field `priorities`, else 1)."""
    units = [_srv_unit(inst, snap, domain, ttl, weights[n], srv_weights[n] if srv_weights else _weight(inst),
                       chase, priorities[n] if priorities else SAME_ZONE_PRIORITY) for n, inst in enumerate(insts)]
    units = [u for u in units if u is not None]
    return [Group(1.0, tuple(units), label, (), local)] if units else []


def _srv_unit(inst, snap, domain, ttl, shuffle_weight, srv_weight, chase: Chase, priority: int) -> Unit | None:
    """SRV target: <hex>.addr for an instance's own IP, <node>.node for one that uses its node's IP
    (as Consul), the hostname for a hostname; the target's addresses go in the additional section
    (for a hostname: when it is a name we serve, with its CNAME chain)."""
    address = snap.instance_address(inst)
    version = names.ip_version(address) if address else -1
    additional: tuple[Record, ...] = ()
    if version in (4, 6) and inst.address:
        target = f"{names.encode_addr(address)}.addr.{inst.datacenter}.{domain}"
    elif version == 0:
        target = address if address.endswith(".") else address + "."
    elif inst.node:
        target = f"{inst.node.lower()}.node.{inst.datacenter}.{domain}"
    else:
        return None
    if version in (4, 6):
        additional = tuple(_address_records(target, address, rdata.ANY, ttl))
    elif version == 0:
        found: list[Record] = []
        for qtype in (rdata.A, rdata.AAAA):
            inner = chase(target, qtype)
            if len(inner) == 1:  # one answer for the target (not a split or a choice of CNAMEs): add it
                found += [r for r in inner[0].prefix + tuple(r for u in inner[0].units for r in u.answer)
                          if r not in found]
        additional = tuple(found)
    try:
        rec = Record(None, rdata.SRV, ttl, rdata.srv(priority, max(0, min(65535, int(srv_weight))), inst.port,
                                                     target))
    except (ValueError, UnicodeEncodeError):
        return None
    return Unit(shuffle_weight, (rec,), additional)


# -- splits -----------------------------------------------------------------


def _split(split: Split, lk: ServiceLookup, qtype: int, snap: View, opts: ResolverOptions,
           chase: Chase, zone: str) -> Plan:
    """The side is chosen first (by weight), then the client's zone is preferred within it."""
    ttl = int(split.ttl) if split.ttl is not None else opts.ttl_for_service(split.name)
    sides = split_sides(split, snap, only_passing=opts.only_passing)
    if not sides:
        return _negative(NXDOMAIN, lk.domain)
    locals_ = [same_zone(snap, side.instances, zone, minimum=opts.same_zone_min) for side in sides]
    if qtype == rdata.SRV:
        shares, insts_all, priorities = [], [], []
        for side, local in zip(sides, locals_):
            inst_w = [max(_weight(i), 0) for i in side.instances]
            denom = sum(inst_w) or len(inst_w)
            for inst, w in zip(side.instances, inst_w):
                shares.append(side.share * (w or 1) / denom)
                insts_all.append(inst)
            priorities += local.priorities
        preferred = None if not zone else all(local.same_zone for local in locals_)
        groups = _srv_groups(insts_all, snap, lk.domain, ttl, shares, scale_shares(shares), "*", chase,
                             priorities, preferred)
        if not groups:
            return _negative(NOERROR, lk.domain)
        return Plan(groups=tuple(groups), split=split.name)
    groups = [g for side, local in zip(sides, locals_)
              for g in _address_groups(local.addresses, qtype, snap, ttl, side.target.weight,
                                       _target_label(side.target), chase, local.same_zone)]
    if not groups:
        return _negative(NOERROR, lk.domain)
    return Plan(groups=tuple(groups), limit=_limit(qtype, opts), split=split.name)


def _target_label(target) -> str:
    label = f"{target.service}:{target.tag}" if target.tag else target.service
    return f"{label}@{target.datacenter}" if target.datacenter else label


# -- prepared queries ---------------------------------------------------------


def _query(lk: QueryLookup, qtype: int, snap: View, opts: ResolverOptions, chase: Chase, client: Client,
           asked: bool) -> Plan:
    """Local eligible instances, else the first failover datacenter's (catalog/queries.py decides).
    asked: the name is the question (not a CNAME target), so intentions on the query's service apply."""
    found = queries.find(snap.queries, lk.name) if lk.datacenter in (None, snap.datacenter) else None
    if found is None:
        return _negative(NXDOMAIN, lk.domain)
    q = queries.render(found, lk.name)
    if asked and opts.enforce_intentions:
        denied = _denied(q.service, client, snap, opts, lk.domain)
        if denied is not None:
            return denied
    outcome = queries.execute(snap, q, peers=opts.peer_datacenters)
    if not outcome.instances:
        return _negative(NXDOMAIN, lk.domain)
    ttl = int(q.ttl) if q.ttl is not None else opts.ttl_for_service(q.service)
    return _instances(outcome.instances, qtype, snap, opts, lk.domain, ttl, chase,
                      client.zone if opts.prefer_same_zone else "")


# -- nodes, addr, apex, reverse ---------------------------------------------


def _node(lk: NodeLookup, qtype: int, snap: View, opts: ResolverOptions) -> Plan:
    dc = _known_dc(lk.datacenter, snap)
    node = snap.nodes.get((dc, lk.node)) if dc else None
    if node is None:
        return _negative(NXDOMAIN, lk.domain)
    records = _address_records(None, node.address, qtype, opts.node_ttl)
    if qtype in (rdata.TXT, rdata.ANY) and node.meta:
        records += [Record(None, rdata.TXT, opts.node_ttl, rdata.txt(_meta_txt(k, v))) for k, v in node.meta]
    if not records:
        return _negative(NOERROR, lk.domain)
    return Plan(groups=_single(records))


def _meta_txt(key: str, value: str) -> str:
    """Node meta as TXT, as Consul: a `rfc1035-` key gives the bare value, others `key=value` (RFC 1464)."""
    if key.lower().startswith("rfc1035-"):
        return value
    stripped = key.strip(" ")
    lead = len(key) - len(key.lstrip(" "))
    trail = len(key) - len(key.rstrip(" ")) if stripped else 0
    body = stripped.replace("`", "``").replace("=", "`=")
    return "` " * lead + body + "` " * trail + "=" + value.replace("`", "``")


def _addr(lk: AddrLookup, qtype: int, snap: View, opts: ResolverOptions) -> Plan:
    if lk.ip is None or _known_dc(lk.datacenter, snap) is None:
        return _negative(NXDOMAIN, lk.domain)
    records = _address_records(None, lk.ip, qtype, 0)
    if not records:
        return _negative(NOERROR, lk.domain)
    return Plan(groups=_single(records))


def _apex(lk: ApexLookup, qtype: int, snap: View, opts: ResolverOptions) -> Plan:
    ttl = opts.soa.min_ttl
    if lk.ns:
        records = [r for ip in opts.ns_addresses for r in _address_records(None, ip, qtype, ttl)]
        return Plan(groups=_single(records)) if records else _negative(NOERROR, lk.domain)
    records = []
    if qtype in (rdata.SOA, rdata.ANY):
        soa = soa_record(lk.domain, snap, opts)
        records.append(Record(None, rdata.SOA, soa.ttl, soa.rdata))
    if qtype in (rdata.NS, rdata.ANY):
        records.append(Record(None, rdata.NS, ttl, rdata.name("ns." + lk.domain)))
    if not records:
        return _negative(NOERROR, lk.domain)
    # the record order at the apex is fixed (SOA before NS), so no shuffle group
    return Plan(groups=(Group(1.0, (Unit(1.0, tuple(records)),)),))


def _reverse(rev: ReverseLookup, qtype: int, snap: View, opts: ResolverOptions) -> Plan | None:
    """PTR for a catalog IP; None (forward) when the IP is not ours."""
    domain = opts.domains[0]
    nodes = snap.ip_nodes.get(rev.ip)
    if nodes:  # as Consul: a node's IP names the node, services only when no node has it
        targets = [f"{n}.node.{dc}.{domain}" for dc, n in sorted(nodes)]
    else:
        targets = [f"{s}.service.{dc}.{domain}" for dc, s in sorted(snap.ip_services.get(rev.ip, ()))]
    if not targets:
        return None
    if qtype not in (rdata.PTR, rdata.ANY):
        return Plan()  # NODATA; no SOA of ours covers arpa names
    ttl = opts.node_ttl if nodes else opts.ttl_for_service(targets[0].split(".", 1)[0])
    records = []
    for t in targets:
        try:
            records.append(Record(None, rdata.PTR, ttl, rdata.name(t)))
        except (ValueError, UnicodeEncodeError):
            continue
    return Plan(groups=(Group(1.0, (Unit(1.0, tuple(records)),)),))


# -- authoritative zones from master files -----------------------------------


def _zone(qname: str, qtype: int, zi) -> Plan:
    soa = tuple(Record(r.name, r.rtype, min(r.ttl, _soa_minimum(r.rdata)), r.rdata)
                for r in zi.by_name.get(zi.zone.origin, ()) if r.rtype == rdata.SOA)
    records = zi.by_name.get(qname)
    owner_is_qname = True
    if records is None and qname not in zi.names:
        wildcard = "*." + qname.split(".", 1)[1] if "." in qname[:-1] else None
        records = zi.by_name.get(wildcard) if wildcard else None
        if records is None:
            return Plan(rcode=NXDOMAIN, authority=soa)
    answer: list[Record] = []
    if records:
        matching = [r for r in records if r.rtype == qtype or qtype == rdata.ANY]
        if not matching:
            matching = [r for r in records if r.rtype == rdata.CNAME]
            if matching:
                # chase the CNAME inside this zone once, as an authoritative server does
                target = read_name(matching[0].rdata, 0, allow_pointers=False)[0].lower()
                answer.extend(Record(None if owner_is_qname else qname, r.rtype, r.ttl, r.rdata) for r in matching)
                answer.extend(Record(r.name, r.rtype, r.ttl, r.rdata)
                              for r in zi.by_name.get(target, ()) if r.rtype == qtype)
        else:
            answer.extend(Record(None, r.rtype, r.ttl, r.rdata) for r in matching)
    if not answer:
        return Plan(authority=soa)
    return Plan(groups=(Group(1.0, (Unit(1.0, tuple(answer)),)),))


def _soa_minimum(raw: bytes) -> int:
    return int.from_bytes(raw[-4:], "big") if len(raw) >= 4 else 0
