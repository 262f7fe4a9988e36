"""What ships in Dockerfile and deploy/: linted, schema-checked, consistent, and working.

No image is built and no cluster is needed: the Dockerfile goes through hadolint,
the manifests through the Kubernetes schemas (kubernetes-validate), the systemd
units through `systemd-analyze verify` where it exists, the register script
through shellcheck and a run against an API on loopback, and every meshdns
config that ships is parsed by meshdns itself.
"""
from __future__ import annotations

import configparser
import contextlib
import fnmatch
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.resolver
import pytest
import yaml

from harness import ROOT, ServerThread, free_port, make_config, query, rrset_values, wait_until
from meshdns.config import Config, parse_config

DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
ETCD = KUBE / "etcd"
VM = DEPLOY / "vm"
COREDNS = DEPLOY / "coredns"


def tool(name: str) -> str:
    """A linter from the `test` extra (pip install -e '.[test]')."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def load_toml(text: str) -> Config:
    return parse_config(tomllib.loads(text))


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


# -- Dockerfile ----------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            instr, _, args = line.partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    instrs = dockerfile()
    last_from = max(i for i, (instr, _) in enumerate(instrs) if instr == "FROM")
    return instrs[last_from:]


def image_config() -> Config:
    return load_toml((DEPLOY / "docker" / "meshdns.toml").read_text())


def test_dockerfile_passes_hadolint():
    out = subprocess.run([tool("hadolint"), "--no-color", "Dockerfile"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_image_is_multi_stage_slim_and_runs_meshdns_as_non_root():
    instrs = dockerfile()
    froms = [args for instr, args in instrs if instr == "FROM"]
    assert len(froms) == 2 and all(f.split()[0] == "python:3.11-slim" for f in froms)
    final = final_stage()
    # Only the runtime reaches the final image: no source tree, no wheel file left behind.
    copies = [args for instr, args in final if instr == "COPY"]
    sources = {c.split()[0] for c in copies}
    assert not sources & {"meshdns", ".", "pyproject.toml"} and not any(s.startswith("--from") for s in sources)
    runs = " ".join(args for instr, args in final if instr == "RUN")
    assert "--mount=type=bind,from=build" in runs and "--no-index" in runs
    user = [args for instr, args in final if instr == "USER"][-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, "numeric non-root USER (Kubernetes runAsNonRoot needs a number)"
    entrypoint = json.loads([args for instr, args in final if instr == "ENTRYPOINT"][-1])
    cmd = json.loads([args for instr, args in final if instr == "CMD"][-1])
    assert entrypoint == ["meshdns", "serve"]
    config_path = cmd[cmd.index("--config") + 1]
    assert f"deploy/docker/meshdns.toml {config_path}" in copies
    volume = json.loads([args for instr, args in final if instr == "VOLUME"][-1])
    assert volume == [image_config().data_dir]
    # the zones directory is made empty: the demo zones/ is not production data
    assert not any(c.split()[0] == "zones" for c in copies)
    assert f"install -d -m 0755 {image_config().zones}" in runs


def test_image_listens_on_8600_and_keeps_the_unauthenticated_api_on_loopback():
    cfg = image_config()
    assert cfg.dns.listen == ("0.0.0.0", 8600)
    assert cfg.http.listen[1] == 8500
    # meshdns refuses a non-loopback API without tokens; the image must start as shipped.
    assert is_loopback(cfg.http.listen[0]) and not cfg.acl_tokens and not cfg.http.insecure
    exposed = set(" ".join(args for instr, args in final_stage() if instr == "EXPOSE").split())
    assert exposed == {"8600/udp", "8600/tcp", "8500/tcp"}


def healthcheck() -> tuple[list[str], str]:
    """The HEALTHCHECK command (exec form) and the URL it checks by default."""
    args = [a for instr, a in final_stage() if instr == "HEALTHCHECK"][-1]
    command = json.loads(args[args.index("CMD") + 3:].strip())
    env = " ".join(a for instr, a in final_stage() if instr == "ENV")
    url = re.search(r"HEALTHCHECK_URL=(\S+)", env).group(1)
    return command, url


def test_healthcheck_targets_healthz_on_the_api_address():
    command, url = healthcheck()
    assert command[0] == "python" and "urlopen" in command[-1]
    host, port = image_config().http.listen
    assert url == f"http://{host}:{port}/healthz"


class _StatusServer:
    """Answers every GET with a fixed status: stands in for /healthz."""

    def __init__(self, status: int):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(status)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/healthz"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("status,healthy", [(200, True), (503, False), (None, False)])
def test_healthcheck_command_fails_unless_healthz_answers_2xx(status, healthy):
    command, _ = healthcheck()
    if status is None:  # nothing listening
        stub = _StatusServer(200)
        stub.close()
    else:
        stub = _StatusServer(status)
    try:
        out = subprocess.run([sys.executable, *command[1:]], env={**os.environ, "HEALTHCHECK_URL": stub.url},
                             capture_output=True, timeout=30)
    finally:
        if status is not None:
            stub.close()
    assert (out.returncode == 0) is healthy


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.replace("**/", "*/") if pattern.startswith("**/") else pattern
        if any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.removeprefix("*/"))
               for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_else():
    sources = []
    for instr, args in dockerfile():
        if instr == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    assert sources
    for source in sources:
        files = [source] if (ROOT / source).is_file() else [
            str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts]
        assert files, source
        for f in files:
            assert not dockerignore_excludes(f), f"{f} is copied but excluded by .dockerignore"
    for f in (".git/HEAD", ".meshdns/registrations.db", "tests/test_deploy.py",
              "meshdns/__pycache__/app.cpython-311.pyc", "deploy/kubernetes/deployment.yaml", "zones/billing.toml"):
        assert dockerignore_excludes(f), f


# -- Kubernetes --------------------------------------------------------------------


def manifests(directory: Path) -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d]
            for p in sorted(directory.glob("*.yaml")) if p.name != "kustomization.yaml"}


def objects() -> dict[tuple[str, str], dict]:
    """Every object `kubectl apply -k deploy/kubernetes` creates, meshdns's and its etcd's."""
    return {(d["kind"], d["metadata"]["name"]): d for directory in (KUBE, ETCD)
            for docs in manifests(directory).values() for d in docs}


SCHEMA_VERSIONS = ("1.27.0", None)  # oldest Kubernetes still commonly run, and the newest known


@pytest.mark.parametrize("path", sorted(p for p in [*KUBE.glob("*.yaml"), *ETCD.rglob("*.yaml"),
                                                     *COREDNS.glob("*.yaml")] if p.name != "kustomization.yaml"),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_manifest_validates_against_kubernetes_schemas(path):
    import kubernetes_validate
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for version in SCHEMA_VERSIONS:
        version = version or kubernetes_validate.latest_version()
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']} (v{version}): "
                            f"{'.'.join(map(str, exc.path))}: {exc.message}")


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted([*manifests(KUBE), ETCD.name])
    assert sorted(yaml.safe_load((ETCD / "kustomization.yaml").read_text())["resources"]) == sorted(manifests(ETCD))
    assert kustomization["namespace"] == objects()[("Namespace", "meshdns")]["metadata"]["name"]
    for kind_name, obj in objects().items():
        if kind_name[0] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == kustomization["namespace"], kind_name
    image = objects()[("Deployment", "meshdns")]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert [i["name"] for i in kustomization["images"]] == [image]


def test_kustomize_build_output_validates():
    import kubernetes_validate
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    out = subprocess.run([kubectl, "kustomize", str(KUBE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(objects())
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def cluster_toml() -> dict:
    return tomllib.loads(objects()[("ConfigMap", "meshdns-config")]["data"]["meshdns.toml"])


def without_store(data: dict) -> dict:
    """The config without its [store] table, which meshdns.config does not read yet."""
    return {k: v for k, v in data.items() if k != "store"}


def cluster_config() -> Config:
    return parse_config(without_store(cluster_toml()))


def pod_spec() -> dict:
    return objects()[("Deployment", "meshdns")]["spec"]["template"]["spec"]


def container() -> dict:
    return pod_spec()["containers"][0]


def mount_of(path: str) -> dict:
    """The volume mounted at path or at a parent of it."""
    mounts = [m for m in container()["volumeMounts"]
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} is on no volume"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return next(v for v in pod_spec()["volumes"] if v["name"] == mount["name"])


def test_cluster_config_parses_and_uses_the_in_cluster_api():
    cfg = cluster_config()
    assert cfg.dns.listen == ("0.0.0.0", 8600)
    (kube,) = cfg.kubernetes
    assert kube.in_cluster and kube.datacenter == cfg.datacenter
    assert [(z.name, z.servers) for z in cfg.forwarding.zones] == [("cluster.local.", (("10.96.0.10", 53),))]
    # The kubelet probes the pod IP: the API listens off loopback, so writes need a token.
    assert not is_loopback(cfg.http.listen[0]) and cfg.acl_tokens and not cfg.http.insecure


def test_deployment_files_are_where_the_cluster_config_says():
    cfg = cluster_config()
    args = container()["args"]
    config_path = args[args.index("--config") + 1]
    volume = mount_of(config_path)
    assert volume["configMap"]["name"] == "meshdns-config"
    assert Path(config_path).name in objects()[("ConfigMap", "meshdns-config")]["data"]
    assert mount_of(cfg.zones + "/x.toml")["configMap"]["name"] == "meshdns-zones"
    assert "emptyDir" in mount_of("/tmp/x"), "a writable /tmp under a read-only root"


def test_nothing_the_replicas_share_is_written_to_their_disks():
    """The store is etcd; the SQLite data dir is on no volume, under a read-only root, so a replica
    that tried to keep registrations locally would fail at start instead of diverging from the others."""
    assert cluster_toml()["store"]["backend"] == "etcd"
    with pytest.raises(AssertionError, match="is on no volume"):
        mount_of(cluster_config().data_dir + "/registrations.db")
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True
    writable = [m for m in container()["volumeMounts"] if not m.get("readOnly")]
    assert [(m["mountPath"], sorted(volume_named(m["name"]))) for m in writable] == [("/tmp", ["emptyDir", "name"])]
    assert volume_named("tmp")["emptyDir"]["medium"] == "Memory"


def volume_named(name: str) -> dict:
    return next(v for v in pod_spec()["volumes"] if v["name"] == name)


def test_ports_probes_and_service_agree_with_the_config():
    cfg = cluster_config()
    ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in container()["ports"]}
    assert ports["dns"] == (cfg.dns.listen[1], "UDP") and ports["dns-tcp"] == (cfg.dns.listen[1], "TCP")
    assert ports["http"] == (cfg.http.listen[1], "TCP")
    ready, live = container()["readinessProbe"]["httpGet"], container()["livenessProbe"]["httpGet"]
    assert (ready["path"], ready["port"]) == ("/readyz", "http")
    assert (live["path"], live["port"]) == ("/healthz", "http")
    service = objects()[("Service", "meshdns")]["spec"]
    assert sorted((p["port"], p["protocol"], ports[p["targetPort"]][1]) for p in service["ports"]) == [
        (53, "TCP", "TCP"), (53, "UDP", "UDP"), (8500, "TCP", "TCP")]
    ipaddress.ip_address(service["clusterIP"])
    labels = objects()[("Deployment", "meshdns")]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    pdb = objects()[("PodDisruptionBudget", "meshdns")]["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["selector"]["matchLabels"].items() <= labels.items()


def test_the_api_is_published_only_with_tokens_read_from_a_secret():
    """The Service publishes 8500: every write then needs a token, and no token secret is in the ConfigMap."""
    published = [p for p in objects()[("Service", "meshdns")]["spec"]["ports"] if p["targetPort"] == "http"]
    cfg = cluster_config()
    assert published and cfg.acl_tokens and not cfg.http.insecure
    for token in cfg.acl_tokens:
        assert token.secret == "" and token.secret_file, "a secret in a ConfigMap is readable by anyone who reads it"
        volume = mount_of(token.secret_file)
        assert volume["secret"]["secretName"] == "meshdns-acl" and not volume["secret"].get("optional")
    assert any(t.management for t in cfg.acl_tokens)


def test_the_shipped_cluster_config_refuses_writes_without_its_token(tmp_path):
    """The cluster's config, run with its Secret laid out as the kubelet does: probes and reads need no
    token, a write needs the one from the Secret."""
    from harness import api
    text = objects()[("ConfigMap", "meshdns-config")]["data"]["meshdns.toml"]
    data = tomllib.loads(text)
    acl = tmp_path / "acl"
    acl.mkdir()
    for token in data["acl"]["tokens"]:
        name = Path(token["secret_file"]).name
        (acl / name).write_text(f"{name}-t0ken-from-the-secret\n")
        token["secret_file"] = str(acl / name)
    data.update(zones=str(tmp_path / "zones"), data_dir=str(tmp_path / "data"))
    data.pop("kubernetes")          # no cluster here
    data = without_store(data)      # tokens work alike on either store
    data["dns"]["listen"], data["http"]["listen"] = "127.0.0.1:0", "127.0.0.1:0"
    (tmp_path / "zones").mkdir()
    srv = ServerThread(parse_config(data)).start()
    try:
        assert api(srv.http, "GET", "/readyz").status == 200 and api(srv.http, "GET", "/metrics").status == 200
        body = {"Name": "billing", "ID": "billing-1", "Address": "127.0.0.9", "Port": 80}
        assert api(srv.http, "PUT", "/v1/agent/service/register", body).status == 403
        assert api(srv.http, "PUT", "/v1/agent/service/register", body, token="admin-t0ken-from-the-secret").status \
            == 200
    finally:
        srv.stop()


def test_network_policy_admits_dns_from_anyone_and_the_api_only_from_chosen_sources():
    policy = objects()[("NetworkPolicy", "meshdns")]["spec"]
    labels = objects()[("Deployment", "meshdns")]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    container_ports = {(p["containerPort"], p["protocol"]) for p in container()["ports"]}
    admitted = {}
    for rule in policy["ingress"]:
        assert rule.get("ports"), "a rule without ports opens every port"
        for port in rule["ports"]:
            assert (port["port"], port["protocol"]) in container_ports, port
            admitted[(port["port"], port["protocol"])] = rule.get("from")
    cfg = cluster_config()
    dns_port, http_port = cfg.dns.listen[1], cfg.http.listen[1]
    assert admitted[(dns_port, "UDP")] is None and admitted[(dns_port, "TCP")] is None   # every client
    sources = admitted[(http_port, "TCP")]
    assert sources, "the API must not be open to every pod"
    assert all(s.get("namespaceSelector", {}).get("matchLabels") or s.get("ipBlock") for s in sources)
    assert not any(s.get("ipBlock", {}).get("cidr") in ("0.0.0.0/0", "::/0") for s in sources)


def test_pods_are_locked_down_and_spread():
    deployment = objects()[("Deployment", "meshdns")]
    assert deployment["spec"]["replicas"] == 3
    pod, sc = pod_spec(), container()["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert sc == {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                  "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    uid = [args for instr, args in final_stage() if instr == "USER"][-1].split(":")[0]
    assert pod["securityContext"]["runAsUser"] == int(uid), "the image's user"
    resources = container()["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()



def restore_pod() -> dict:
    (pod,) = manifests(ETCD / "restore")["restore-member.yaml"]
    return pod


@pytest.mark.parametrize("pod", [lambda: objects()[("Deployment", "meshdns")]["spec"]["template"]["spec"],
                                 lambda: etcd_set()["spec"]["template"]["spec"],
                                 lambda: restore_pod()["spec"]], ids=["meshdns", "etcd", "etcd-restore"])
def test_pods_meet_the_restricted_pod_security_standard_their_namespace_enforces(pod):
    namespace = objects()[("Namespace", "meshdns")]["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = pod()
    assert not {"hostNetwork", "hostPID", "hostIPC"} & pod.keys()
    assert not [v for v in pod.get("volumes", []) if "hostPath" in v]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod.get("initContainers", []) + pod["containers"]:
        assert c["securityContext"] == {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                        "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}, c["name"]


# -- the etcd the replicas share ------------------------------------------------------------


def etcd_set() -> dict:
    return objects()[("StatefulSet", "meshdns-etcd")]


def etcd_container() -> dict:
    (c,) = etcd_set()["spec"]["template"]["spec"]["containers"]
    return c


def kubelet_expand(text: str, env: dict[str, str]) -> str:
    """$(VAR) in command and args, as the kubelet expands them."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], text)


def container_argv(c: dict, pod_name: str) -> list[str]:
    """A container's command line as the kubelet runs it in pod `pod_name`: its env (values and downward-API
    fields) expanded."""
    fields = {"metadata.name": pod_name, "metadata.namespace": etcd_set()["metadata"]["namespace"]}
    env = {e["name"]: e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
           for e in c.get("env", [])}
    return [kubelet_expand(a, env) for a in c["command"] + c.get("args", [])]


def etcd_argv(pod_name: str) -> list[str]:
    """The etcd command line of one member."""
    return container_argv(etcd_container(), pod_name)


def flags(argv: list[str]) -> dict[str, str]:
    out = {}
    for arg in argv[1:]:
        name, sep, value = arg.partition("=")
        assert name.startswith("--") and sep, f"{arg}: --flag=value expected"
        assert name[2:] not in out, f"{name} given twice"
        out[name[2:]] = value
    return out


def member_names() -> list[str]:
    return [f"{etcd_set()['metadata']['name']}-{i}" for i in range(etcd_set()["spec"]["replicas"])]


def headless_host(pod_name: str) -> str:
    """The name a StatefulSet pod has through its governing headless Service."""
    return f"{pod_name}.{etcd_set()['spec']['serviceName']}.{etcd_set()['metadata']['namespace']}.svc"


def container_port(c: dict, name: str) -> int:
    return next(p["containerPort"] for p in c["ports"] if p["name"] == name)


def test_etcd_is_three_members_that_find_each_other_by_their_stable_names():
    spec = etcd_set()["spec"]
    assert spec["replicas"] == 3 and spec["podManagementPolicy"] == "Parallel"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    peers = objects()[("Service", spec["serviceName"])]["spec"]
    assert peers["clusterIP"] == "None" and peers["publishNotReadyAddresses"] is True
    assert peers["selector"].items() <= labels.items()
    c = etcd_container()
    assert {(p["port"], p["targetPort"]) for p in peers["ports"]} == {(container_port(c, "client"), "client"),
                                                                     (container_port(c, "peer"), "peer")}
    client, peer = container_port(c, "client"), container_port(c, "peer")
    cluster = {n: f"http://{headless_host(n)}:{peer}" for n in member_names()}
    for name in member_names():
        f = flags(etcd_argv(name))
        assert f["name"] == name
        assert dict(m.split("=", 1) for m in f["initial-cluster"].split(",")) == cluster
        assert f["initial-advertise-peer-urls"] == cluster[name]
        assert f["advertise-client-urls"] == f"http://{headless_host(name)}:{client}"
        assert f["listen-client-urls"] == f"http://0.0.0.0:{client}"
        assert f["listen-peer-urls"] == f"http://0.0.0.0:{peer}"
        assert f["initial-cluster-state"] == "new"


def test_etcd_members_keep_their_data_on_their_own_volumes():
    spec = etcd_set()["spec"]
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["resources"]["requests"]["storage"]
    (mount,) = etcd_container()["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"] and not mount.get("readOnly")
    data_dir = flags(etcd_argv(member_names()[0]))["data-dir"]
    assert data_dir.startswith(mount["mountPath"].rstrip("/") + "/"), "its root may hold lost+found"
    assert not [v for v in spec["template"]["spec"].get("volumes", []) if v["name"] == mount["name"]], \
        "the claim template, not a pod volume, backs the data"
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    security = spec["template"]["spec"]["securityContext"]
    assert security["fsGroup"] == security["runAsUser"], "the volume is writable for etcd's user"


def test_etcd_compacts_its_history_and_has_a_quota():
    f = flags(etcd_argv(member_names()[0]))
    assert (f["auto-compaction-mode"], f["auto-compaction-retention"]) == ("periodic", "10m")
    assert 0 < int(f["quota-backend-bytes"]) <= 8 << 30, "etcd's suggested maximum is 8 GiB"


def test_etcd_image_is_upstream_pinned_and_has_the_compaction_fix():
    """etcd#18089 (a DELETE lost from a watch at a compaction) is fixed from 3.5.15; the image is the
    version the store tests run against."""
    from etcd_cluster import pinned_version
    repository, _, tag = etcd_container()["image"].rpartition(":")
    assert repository in ("gcr.io/etcd-development/etcd", "quay.io/coreos/etcd")
    version = tuple(int(x) for x in re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", tag).groups())
    assert version >= (3, 5, 15)
    assert tag == f"v{pinned_version()}"



def test_the_restore_pod_rebuilds_a_member_as_the_statefulset_runs_it():
    """Same image, name, volume, data directory and cluster as the member; history renumbered and marked
    compacted, so replicas relist and X-Consul-Index does not go backwards."""
    pod = restore_pod()
    assert pod["metadata"]["namespace"] == etcd_set()["metadata"]["namespace"]
    (c,) = pod["spec"]["containers"]
    assert c["image"] == etcd_container()["image"] and c["command"] == ["/usr/local/bin/etcdutl"]
    member = next(e["value"] for e in c["env"] if e["name"] == "MEMBER")
    assert member in member_names() and pod["metadata"]["name"].endswith(member.rpartition("-")[2])
    argv = container_argv(c, pod["metadata"]["name"])
    assert argv[1:4] == ["snapshot", "restore", "/restore/snapshot.db"] and "--mark-compacted" in argv
    restore = flags([argv[0], *(a for a in argv[4:] if a != "--mark-compacted")])
    member_flags = flags(etcd_argv(member))
    for key in ("name", "data-dir", "initial-cluster", "initial-cluster-token", "initial-advertise-peer-urls"):
        assert restore[key] == member_flags[key], key
    assert int(restore["bump-revision"]) >= 1_000_000_000
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (claim,) = etcd_set()["spec"]["volumeClaimTemplates"]
    (mount,) = etcd_container()["volumeMounts"]
    data = next(m for m in c["volumeMounts"] if m["mountPath"] == mount["mountPath"])
    assert volumes[data["name"]]["persistentVolumeClaim"]["claimName"] == f"{claim['metadata']['name']}-{member}"
    assert pod["spec"]["securityContext"]["runAsUser"] == etcd_set()["spec"]["template"]["spec"][
        "securityContext"]["runAsUser"], "the restored files belong to the member's user"


def test_etcd_probes_do_not_restart_members_that_lost_quorum():
    c = etcd_container()
    metrics = container_port(c, "metrics")
    assert flags(etcd_argv(member_names()[0]))["listen-metrics-urls"] == f"http://0.0.0.0:{metrics}"
    probes = {kind: c[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {kind: (p["path"], p["port"]) for kind, p in probes.items()} == {
        "startupProbe": ("/livez", "metrics"), "livenessProbe": ("/livez", "metrics"),
        "readinessProbe": ("/readyz", "metrics")}


def test_etcd_members_are_spread_and_drained_one_at_a_time():
    labels = etcd_set()["spec"]["template"]["metadata"]["labels"]
    (term,) = etcd_set()["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= labels.items()
    pdb = objects()[("PodDisruptionBudget", "meshdns-etcd")]["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["selector"]["matchLabels"].items() <= labels.items()
    meshdns = objects()[("Deployment", "meshdns")]["spec"]["template"]["metadata"]["labels"]
    for selector in (objects()[("Service", "meshdns")]["spec"]["selector"],
                     objects()[("PodDisruptionBudget", "meshdns")]["spec"]["selector"]["matchLabels"]):
        assert not selector.items() <= labels.items(), "meshdns's Service and PDB must not take etcd pods"
    assert not pdb["selector"]["matchLabels"].items() <= meshdns.items()


def test_only_meshdns_pods_and_the_members_reach_etcd():
    """Whoever can write to etcd changes the catalog without an ACL token."""
    policy = objects()[("NetworkPolicy", "meshdns-etcd")]["spec"]
    members = etcd_set()["spec"]["selector"]["matchLabels"]
    meshdns = objects()[("Deployment", "meshdns")]["spec"]["selector"]["matchLabels"]
    assert policy["podSelector"]["matchLabels"] == members and policy["policyTypes"] == ["Ingress"]
    c = etcd_container()
    client, peer, metrics = (container_port(c, n) for n in ("client", "peer", "metrics"))
    reach: dict[int, list[dict]] = {}
    for rule in policy["ingress"]:
        assert rule.get("from") and rule.get("ports"), "a rule without `from` or `ports` opens too much"
        for port in rule["ports"]:
            reach.setdefault(port["port"], []).extend(rule["from"])
    assert set(reach) == {client, peer, metrics}

    def pods(sources: list[dict]) -> list[dict]:
        assert all(set(s) == {"podSelector"} for s in sources), sources
        return sorted((s["podSelector"]["matchLabels"] for s in sources), key=str)
    assert pods(reach[client]) == sorted([meshdns, members], key=str)
    assert pods(reach[peer]) == [members]
    assert [set(s) for s in reach[metrics]] == [{"namespaceSelector"}]



@contextlib.contextmanager
def etcd_members(commands: dict[str, tuple[list[str], dict[str, str]]], logs: Path):
    """Start one etcd process per member (argv, environment); every one is killed by PID at the end."""
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, (argv, env) in commands.items():
            with open(logs / f"{name}.log", "wb") as log:
                procs[name] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL)
        yield procs
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(30)


def http_status(url: str, context=None) -> int | None:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_members_ready(urls: dict[str, str], procs: dict[str, subprocess.Popen], logs: Path, context=None) -> None:
    def ready():
        for name, proc in procs.items():
            if proc.poll() is not None:  # not an AssertionError: wait_until would keep waiting
                raise RuntimeError(f"{name} exited: {(logs / f'{name}.log').read_text()[-3000:]}")
        return all(http_status(url, context) == 200 for url in urls.values())
    wait_until(ready, 90, 0.2, what="every etcd member ready (a leader elected)")


def started_with(log: Path) -> dict:
    """The settings an etcd member logs at start-up."""
    for line in log.read_text().splitlines():
        if '"auto-compaction-mode"' in line:
            return json.loads(line)
    raise AssertionError(f"no start-up settings in {log}")


def test_the_statefulset_command_lines_form_a_cluster_whose_probes_answer(tmp_path):
    """Each member's command line as the kubelet runs it, with only its addresses moved to loopback ports
    and its volume to a directory: three members elect a leader, and the probes' paths answer there."""
    from etcd_cluster import NO_ETCD, etcd_binary
    binary = etcd_binary() or pytest.skip(NO_ETCD)
    c = etcd_container()
    names = member_names()
    ports = {n: {container_port(c, p): free_port() for p in ("client", "peer", "metrics")} for n in names}
    mount = c["volumeMounts"][0]["mountPath"]

    def local(argv: list[str], me: str) -> list[str]:
        def address(m: re.Match) -> str:
            owner = me if m.group(2) == "0.0.0.0" else next(n for n in names if headless_host(n) == m.group(2))
            return f"{m.group(1)}127.0.0.1:{ports[owner][int(m.group(3))]}"
        argv = [re.sub(r"(https?://)([^:/,]+):(\d+)", address, a).replace(mount, str(tmp_path / me)) for a in argv]
        return [binary, *argv[1:]]

    probes = {kind: c[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    metrics = container_port(c, "metrics")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    commands = {n: (local(etcd_argv(n), n), {**env, "POD_NAME": n}) for n in names}
    with etcd_members(commands, tmp_path) as procs:
        wait_members_ready({n: f"http://127.0.0.1:{ports[n][metrics]}{probes['readinessProbe']['path']}"
                            for n in names}, procs, tmp_path)
        for n in names:
            assert http_status(f"http://127.0.0.1:{ports[n][metrics]}{probes['livenessProbe']['path']}") == 200
            settings = started_with(tmp_path / f"{n}.log")
            assert (settings["auto-compaction-mode"], settings["auto-compaction-retention"]) == ("periodic", "10m0s")
            assert settings["quota-backend-bytes"] == int(flags(etcd_argv(n))["quota-backend-bytes"])


STORE_KEYS = {"backend", "endpoints", "prefix", "timeout", "member_ttl", "advertise", "ca_file", "cert_file",
              "key_file", "username", "password_file"}   # DESIGN.md section 8


def uncommented(text: str, keys: set[str]) -> str:
    """`text` with the commented-out `# key = ...` lines of `keys` made active."""
    return re.sub(r"^(\s*)# (" + "|".join(sorted(keys)) + r") = ", r"\1\2 = ", text, flags=re.M)


def test_replicas_share_their_state_through_the_shipped_etcd():
    from meshdns.store.etcd import grpc_targets
    store = cluster_toml()["store"]
    assert set(store) <= STORE_KEYS and store["backend"] == "etcd" and store["prefix"] == "/meshdns/"
    assert store["timeout"] and store["member_ttl"]
    (endpoint,) = store["endpoints"]
    # one name that resolves to every ready member, so the client spreads over them and skips a dead one
    (target,), tls = grpc_targets(store["endpoints"])
    assert target.startswith("dns:///") and not tls
    host, port = target.removeprefix("dns:///").rsplit(":", 1)
    service, namespace, rest = host.split(".", 2)
    assert (namespace, rest) == (etcd_set()["metadata"]["namespace"], "svc.cluster.local")
    clients = objects()[("Service", service)]["spec"]
    assert clients["clusterIP"] == "None" and not clients.get("publishNotReadyAddresses")
    assert clients["selector"] == etcd_set()["spec"]["selector"]["matchLabels"]
    assert [(p["port"], p["targetPort"]) for p in clients["ports"]] == [(int(port), "client")]
    assert int(port) == container_port(etcd_container(), "client")


def test_each_replica_advertises_its_pod_address_and_api_port():
    args = container()["args"]
    advertise = args[args.index("--advertise") + 1]
    assert advertise == f"$(POD_IP):{cluster_config().http.listen[1]}"
    (env,) = [e for e in container()["env"] if e["name"] == "POD_IP"]
    assert env["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert "advertise" not in cluster_toml()["store"], "one ConfigMap for every replica: the address is per pod"


def test_an_etcd_of_your_own_takes_its_client_certificate_from_the_optional_secret():
    """The commented TLS and user keys, uncommented, name files in the meshdns-etcd-tls Secret's mount."""
    text = objects()[("ConfigMap", "meshdns-config")]["data"]["meshdns.toml"]
    store = tomllib.loads(uncommented(text, STORE_KEYS))["store"]
    files = {k: store[k] for k in ("ca_file", "cert_file", "key_file", "password_file")}
    assert store["username"]
    for key, path in files.items():
        secret = mount_of(path)["secret"]
        assert secret["secretName"] == "meshdns-etcd-tls" and secret["optional"] is True, key
    keys = {Path(path).name for path in files.values()}
    command = re.search(r"create secret generic meshdns-etcd-tls(?:.*\\\n)*.*", text).group(0)
    given = set(re.findall(r"--from-file=([\w.]+)", command))
    assert keys == given | {"password"}, "every file the config names is a key the documented Secret has"
    assert "--from-literal=password=" in text


def rules(role: dict) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_rbac_reads_cluster_wide_and_writes_only_in_the_write_namespace():
    objs = objects()
    assert rules(objs[("ClusterRole", "meshdns-read")]) == {
        (group, resource, verb) for group, resource in (("", "services"), ("", "nodes"),
                                                         ("discovery.k8s.io", "endpointslices"))
        for verb in ("list", "watch")}
    role = objs[("Role", "meshdns-reverse-sync")]
    # exactly what the reverse sync does: list its own objects, read one before replacing or deleting it
    assert rules(role) == {(group, resource, verb)
                           for group, resource in (("", "services"), ("discovery.k8s.io", "endpointslices"))
                           for verb in ("get", "list", "create", "update", "delete")}
    assert role["metadata"]["namespace"] == cluster_config().kubernetes[0].write_namespace
    account = objs[("ServiceAccount", "meshdns")]["metadata"]
    assert pod_spec()["serviceAccountName"] == account["name"]
    for kind, name, role_kind in (("ClusterRoleBinding", "meshdns-read", "ClusterRole"),
                                  ("RoleBinding", "meshdns-reverse-sync", "Role")):
        binding = objs[(kind, name)]
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in {
            (k, n) for k, n in objs if k == role_kind}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"],
                                        "namespace": account["namespace"]}]


def write_configmap_volume(directory: Path, data: dict[str, str], generation: int) -> None:
    """Lay out files the way the kubelet does: name -> ..data/name, ..data -> a timestamped dir."""
    directory.mkdir(exist_ok=True)
    target = directory / f"..gen_{generation}"
    target.mkdir()
    for name, text in data.items():
        (target / name).write_text(text)
    tmp_link = directory / "..data_tmp"
    tmp_link.symlink_to(target.name)
    os.replace(tmp_link, directory / "..data")
    for name in data:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")


def test_zones_configmap_is_served_and_its_updates_are_picked_up_live(tmp_path):
    zones = objects()[("ConfigMap", "meshdns-zones")]["data"]
    volume = tmp_path / "zones"
    write_configmap_volume(volume, zones, 1)
    srv = ServerThread(make_config(tmp_path, zones=volume)).start()
    try:
        assert rrset_values(query(srv.dns_port, "legacy-billing.service.consul", "A")) == ["192.168.28.213"]
        updated = {name: text.replace("192.168.28.213", "192.168.28.99") for name, text in zones.items()}
        write_configmap_volume(volume, updated, 2)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            answer = rrset_values(query(srv.dns_port, "legacy-billing.service.consul", "A"))
            if answer == ["192.168.28.99"]:
                break
            time.sleep(0.1)
        assert answer == ["192.168.28.99"]
    finally:
        srv.stop()


# -- CoreDNS -----------------------------------------------------------------------


def service_cluster_ip() -> str:
    return objects()[("Service", "meshdns")]["spec"]["clusterIP"]


def corefile_block(text: str, zone: str) -> list[str]:
    """The active (uncommented) lines of one server block."""
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    start = lines.index(f"{zone} {{")
    depth, block = 0, []
    for line in lines[start:]:
        depth += line.count("{") - line.count("}")
        block.append(line)
        if depth == 0:
            return block
    raise AssertionError(f"unbalanced block {zone}")


def test_corefile_forwards_consul_to_meshdns_without_caching():
    block = corefile_block((COREDNS / "Corefile.consul").read_text(), "consul:53")
    forwards = [line.split() for line in block if line.startswith("forward ")]
    assert [f[:3] for f in forwards] == [["forward", ".", service_cluster_ip()]]
    assert not [line for line in block if line.split()[0] == "cache"], \
        "a cache holds one side of a split for its TTL"


def test_kube_dns_stub_domain_points_at_meshdns():
    (cm,) = manifests(COREDNS)["kube-dns-stubdomains.yaml"]
    assert (cm["metadata"]["namespace"], cm["metadata"]["name"]) == ("kube-system", "kube-dns")
    assert json.loads(cm["data"]["stubDomains"]) == {"consul": [service_cluster_ip()]}


# -- VMs -------------------------------------------------------------------------------


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read_string((VM / name).read_text())
    return parser


def test_vm_config_parses_and_its_token_example_works_when_uncommented():
    text = (VM / "meshdns.toml").read_text()
    cfg = load_toml(text)
    assert cfg.dns.listen == ("0.0.0.0", 53)
    assert is_loopback(cfg.http.listen[0]) and not cfg.acl_tokens
    opened = re.sub(r"^# (\[\[acl\.tokens\]\]|secret|write)", r"\1", text, flags=re.M)
    opened = opened.replace('listen = "127.0.0.1:8500"', 'listen = "0.0.0.0:8500"')
    cfg = load_toml(opened)
    assert cfg.http.listen == ("0.0.0.0", 8500)
    assert [(t.secret, t.write) for t in cfg.acl_tokens] == [("<64 hex characters>", ("legacy-billing",))]


def test_the_documented_wheel_build_gives_the_wheel_the_vm_install_names(tmp_path):
    """deploy/vm/README.md builds the wheel that its install line (and the unit's comment) installs."""
    import zipfile
    readme = (VM / "README.md").read_text()
    build = next(line.split("#")[0].split() for line in readme.splitlines() if " -m pip wheel " in line)
    wheel = re.search(r"meshdns-[\w.]+-py3-none-any\.whl", readme).group(0)
    assert f"pip install ./{wheel}" in readme and wheel in (VM / "meshdns.service").read_text()
    source = tmp_path / "src"   # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(ROOT / "meshdns", source / "meshdns", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # offline here: the build tools installed with the test extra stand in for pip's isolated download
    args = [sys.executable, *build[1:]] + ["--no-build-isolation", "--quiet"]
    out = subprocess.run(args, cwd=source, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    built = source / build[build.index("--wheel-dir") + 1] / wheel
    assert built.is_file(), sorted(p.name for p in built.parent.iterdir())
    names = zipfile.ZipFile(built).namelist()
    assert "meshdns/cli.py" in names and not any(n.startswith("zones/") for n in names)
    entry_points = zipfile.ZipFile(built).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "meshdns = meshdns.cli:main" in entry_points


def test_meshdns_unit_binds_53_unprivileged_and_hardened():
    service = unit("meshdns.service")["Service"]
    assert service["AmbientCapabilities"] == service["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("DynamicUser", "yes"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes")):
        assert service[key] == value, key
    argv = service["ExecStart"].split()
    assert argv[1:3] == ["serve", "--config"]
    cfg = load_toml((VM / "meshdns.toml").read_text())
    assert argv[3] == f"/etc/{service['ConfigurationDirectory']}/meshdns.toml"
    assert cfg.data_dir == f"/var/lib/{service['StateDirectory']}"
    register = unit("meshdns-register.service")["Service"]
    assert register["ExecStart"].split()[1] == "run" and register["EnvironmentFile"].startswith("/etc/meshdns/")


@pytest.mark.parametrize("name,drop_in", [("meshdns.service", None), ("meshdns-register.service", None),
                                          ("etcd.service", None), ("meshdns.service", "meshdns-etcd.conf")])
def test_systemd_unit_verifies(name, drop_in, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    # verify insists that ExecStart exists: point it at a stand-in executable.
    stand_in = tmp_path / "stand-in"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    text = (VM / name).read_text()
    exec_start = unit(name)["Service"]["ExecStart"].split()[0]
    (tmp_path / name).write_text(text.replace(f"ExecStart={exec_start}", f"ExecStart={stand_in}"))
    if drop_in:  # where the README installs it: /etc/systemd/system/<unit>.d/etcd.conf
        (tmp_path / f"{name}.d").mkdir()
        (tmp_path / f"{name}.d" / "etcd.conf").write_text((VM / drop_in).read_text())
        assert f"{drop_in} /etc/systemd/system/{name}.d/etcd.conf" in (VM / "README.md").read_text()
    out = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")
    # Exposure score at most 2.5 of 10 ("OK"); the threshold is given in tenths.
    security = subprocess.run([analyze, "security", "--offline=yes", "--threshold=25", str(tmp_path / name)],
                              capture_output=True, text=True, timeout=60)
    if "--offline" in security.stderr:  # systemd older than 250
        return
    assert security.returncode == 0, (security.stdout + security.stderr)[-3000:]



# -- three VMs on etcd ----------------------------------------------------------------------

VM_README = VM / "README.md"


def env_file(text: str) -> dict[str, str]:
    """An EnvironmentFile= as systemd reads these (KEY=VALUE lines, # comments)."""
    return dict(line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))


def unit_lines(name: str) -> list[str]:
    """The unit's lines, with backslash continuations joined."""
    return re.sub(r"\\\n\s*", " ", (VM / name).read_text()).splitlines()


def exec_start(name: str, env: dict[str, str]) -> list[str]:
    """ExecStart= split into words, ${VAR} replaced as systemd does (each becomes one word)."""
    (line,) = [line for line in unit_lines(name) if line.startswith("ExecStart=")]
    return [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w) for w in line.removeprefix("ExecStart=").split()]


def load_credentials(name: str) -> dict[str, str]:
    """LoadCredential= IDs and the files they are read from."""
    return dict(line.removeprefix("LoadCredential=").split(":", 1) for line in unit_lines(name)
                if line.startswith("LoadCredential="))


def vm_cluster() -> dict[str, str]:
    """Member name -> peer URL, from ETCD_INITIAL_CLUSTER."""
    cluster = env_file((VM / "etcd.env").read_text())["ETCD_INITIAL_CLUSTER"]
    return dict(member.split("=", 1) for member in cluster.split(","))


def vm_member_env(name: str) -> dict[str, str]:
    """/etc/default/etcd on one VM: the shipped file with its first two lines set for that member."""
    from urllib.parse import urlsplit
    env = env_file((VM / "etcd.env").read_text())
    return {**env, "MEMBER_NAME": name, "MEMBER_IP": urlsplit(vm_cluster()[name]).hostname}


def vm_store() -> dict:
    return tomllib.loads((VM / "meshdns-etcd.toml").read_text())["store"]



def test_every_command_block_in_the_vm_readme_is_valid_sh():
    blocks = re.findall(r"```sh\n(.*?)```", VM_README.read_text(), re.S)
    assert len(blocks) >= 10
    for block in blocks:
        out = subprocess.run(["sh", "-n"], input=block, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, (block, out.stderr)
        out = subprocess.run([tool("shellcheck"), "--shell=sh", "--severity=warning", "-"], input=block,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (block, out.stdout)

def test_the_vm_table_names_the_members_etcd_env_bootstraps():
    rows = re.findall(r"^\| (\d) \| `([\w-]+)` \| `([\d.]+)` \|$", VM_README.read_text(), re.M)
    assert [(name, ip) for _, name, ip in rows] == [(n, vm_member_env(n)["MEMBER_IP"]) for n in vm_cluster()]
    assert len(rows) == 3
    shipped = env_file((VM / "etcd.env").read_text())
    first = next(iter(vm_cluster()))
    assert (shipped["MEMBER_NAME"], shipped["MEMBER_IP"]) == (first, vm_member_env(first)["MEMBER_IP"])
    for name, peer in vm_cluster().items():
        ip = vm_member_env(name)["MEMBER_IP"]
        assert ipaddress.ip_address(ip) in ipaddress.ip_network("192.0.2.0/24"), "a documentation range"
        f = flags(exec_start("etcd.service", vm_member_env(name)))
        assert f["name"] == name and f["listen-peer-urls"] == f["initial-advertise-peer-urls"] == peer
        assert f["listen-client-urls"] == f["advertise-client-urls"] == f"https://{ip}:2379"


def test_the_vm_members_compact_and_speak_tls_to_each_other_and_to_clients():
    env = env_file((VM / "etcd.env").read_text())
    assert (env["ETCD_AUTO_COMPACTION_MODE"], env["ETCD_AUTO_COMPACTION_RETENTION"]) == ("periodic", "10m")
    assert 0 < int(env["ETCD_QUOTA_BACKEND_BYTES"]) <= 8 << 30
    assert env["ETCD_CLIENT_CERT_AUTH"] == env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
    credentials = {f"/run/credentials/etcd.service/{cid}" for cid in load_credentials("etcd.service")}
    for key in ("TRUSTED_CA_FILE", "CERT_FILE", "KEY_FILE"):
        assert env[f"ETCD_{key}"] in credentials and env[f"ETCD_PEER_{key}"] in credentials, key
    for name, peer in vm_cluster().items():
        f = flags(exec_start("etcd.service", vm_member_env(name)))
        assert all(f[k].startswith("https://") for k in f if k.endswith("-urls") and k != "listen-metrics-urls")
    data = env["ETCD_DATA_DIR"]
    assert data.startswith(f"/var/lib/{unit('etcd.service')['Service']['StateDirectory']}/")


def test_the_vm_meshdns_config_reaches_every_member_with_its_credentials():
    from meshdns.store.etcd import grpc_targets
    text = (VM / "meshdns-etcd.toml").read_text()
    cfg = parse_config(without_store(tomllib.loads(text)))
    store = vm_store()
    assert set(store) <= STORE_KEYS and store["backend"] == "etcd" and store["prefix"] == "/meshdns/"
    clients = [flags(exec_start("etcd.service", vm_member_env(n)))["advertise-client-urls"] for n in vm_cluster()]
    assert store["endpoints"] == clients
    assert grpc_targets(store["endpoints"])[1] is True, "TLS"
    first = vm_member_env(next(iter(vm_cluster())))
    assert store["advertise"] == f"{first['MEMBER_IP']}:{cfg.http.listen[1]}"
    credentials = load_credentials("meshdns-etcd.conf")
    for path in [store["ca_file"], store["cert_file"], store["key_file"], *(t.secret_file for t in cfg.acl_tokens)]:
        directory, _, cid = path.rpartition("/")
        assert directory == "/run/credentials/meshdns.service" and cid in credentials, path
    assert cfg.http.listen[0] == "0.0.0.0" and cfg.acl_tokens and all(not t.secret for t in cfg.acl_tokens)
    assert cfg.data_dir == f"/var/lib/{unit('meshdns.service')['Service']['StateDirectory']}"



def readme_block(containing: str) -> str:
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", VM_README.read_text(), re.S) if containing in b]
    return block


def installed_from(block: str) -> dict[str, str]:
    """Destination -> source of each `install -m MODE SOURCE DEST` in a README block."""
    return {dest: src for src, dest in re.findall(r"install -m \d+ (\S+) (\S+)", block)}


class VmCluster:
    """The three VMs' etcd members on loopback: the README's certificate recipe, etcd.env and
    etcd.service's command line for each member, with 192.0.2.1N moved to the loopback address 127.0.0.1N
    and each port to a free one. `meshdns_files` are meshdns.service's credentials as the drop-in loads
    them; `local()` moves an address from the shipped files the same way."""

    def __init__(self, root: Path, binary: str):
        self.root = root
        self.binary = binary
        self.ports: dict[tuple[str, str], int] = {}
        self.admin = root / "admin"
        self.admin.mkdir()
        recipe = readme_block("openssl req -x509").replace("192.0.2.", "127.0.0.")
        # etcd checks a peer's certificate against the address it connects from, and on one loopback
        # interface every member connects from 127.0.0.1: the only change to the recipe.
        assert recipe.count("subjectAltName = IP:127.0.0.1%s") == 1
        recipe = recipe.replace("subjectAltName = IP:127.0.0.1%s", "subjectAltName = IP:127.0.0.1%s, IP:127.0.0.1")
        out = subprocess.run(["sh", "-ec", recipe], cwd=self.admin, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        self.copies = installed_from(readme_block("install -d -m 0700 /etc/etcd/pki"))
        self.meshdns_files = self.credentials("meshdns-etcd.conf", "meshdns-1", root / "meshdns-credentials")

    def local(self, text: str) -> str:
        text = text.replace("192.0.2.", "127.0.0.")
        return re.sub(r"(127\.0\.0\.\d+):(\d+)",
                      lambda m: f"{m.group(1)}:{self.ports.setdefault(m.groups(), free_port())}", text)

    def credentials(self, unit_name: str, member: str, into: Path) -> Path:
        """The unit's credentials directory as systemd fills it on VM `member`."""
        into.mkdir(parents=True)
        for cid, dest in load_credentials(unit_name).items():
            shutil.copy(self.admin / self.copies[dest].replace("member-1", f"member-{member[-1]}"), into / cid)
        return into

    def commands(self) -> tuple[dict[str, tuple[list[str], dict[str, str]]], dict[str, str]]:
        """Each member's command line and environment, and the URL its readiness is read from."""
        commands, ready = {}, {}
        for name in vm_cluster():
            creds = self.credentials("etcd.service", name, self.root / name / "credentials")
            env = {k: self.local(v.replace("/run/credentials/etcd.service", str(creds)))
                   for k, v in vm_member_env(name).items()}
            env["ETCD_DATA_DIR"] = str(self.root / name / "data")
            argv = [self.local(a) for a in exec_start("etcd.service", env)]
            ready[name] = flags(argv)["listen-metrics-urls"] + "/readyz"
            commands[name] = ([self.binary, *argv[1:]], {"PATH": os.environ["PATH"], "HOME": str(self.root), **env})
        return commands, ready

    def meshdns_client(self, endpoints: list[str], **overrides):
        """meshdns's etcd client as [store] in meshdns-etcd.toml configures it."""
        from meshdns.store.etcd import EtcdKV
        files = {k: vm_store()[k].replace("/run/credentials/meshdns.service", str(self.meshdns_files))
                 for k in ("ca_file", "cert_file", "key_file")}
        return EtcdKV([self.local(e) for e in endpoints], **{"timeout": 10, **files, **overrides})


@pytest.fixture(scope="module")
def vm_etcd(tmp_path_factory):
    from etcd_cluster import NO_ETCD, etcd_binary
    binary = etcd_binary() or pytest.skip(NO_ETCD)
    shutil.which("openssl") or pytest.fail("openssl is not installed (sh tests/install-tools.sh)")
    root = tmp_path_factory.mktemp("vm-etcd")
    cluster = VmCluster(root, binary)
    commands, ready = cluster.commands()
    with etcd_members(commands, root) as procs:
        wait_members_ready(ready, procs, root)
        yield cluster


async def write_and_read(kv, key: bytes) -> list[tuple[bytes, bytes]]:
    from meshdns.store.kv import Put
    try:
        await kv.txn([], [Put(key, b"written")])
        return [(item.key, item.value) for item in (await kv.list(key))[0]]
    finally:
        await kv.close()


def test_the_three_vm_members_form_a_cluster_that_compacts_and_wants_certificates(vm_etcd):
    for name in vm_cluster():
        log = vm_etcd.root / f"{name}.log"
        settings = started_with(log)
        assert (settings["auto-compaction-mode"], settings["auto-compaction-retention"]) == ("periodic", "10m0s")
        for side in ("peer", "client"):
            (line,) = [json.loads(x) for x in log.read_text().splitlines() if f'"starting with {side} TLS"' in x]
            assert "client-cert-auth = true" in line["tls-info"], line
    token = (vm_etcd.meshdns_files / "admin-token").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token), "the ACL token the config's secret_file names"


def test_meshdns_certificate_writes_to_every_vm_member_and_none_without_it(vm_etcd):
    import asyncio
    from meshdns.store.kv import StoreError
    key = vm_store()["prefix"].encode() + b"deploy-check"
    for endpoint in vm_store()["endpoints"]:
        assert asyncio.run(write_and_read(vm_etcd.meshdns_client([endpoint]), key)) == [(key, b"written")]
        with pytest.raises(StoreError):
            asyncio.run(write_and_read(vm_etcd.meshdns_client([endpoint], timeout=3, cert_file=None, key_file=None),
                                       key))


def test_meshdns_reaches_the_three_vm_members_through_one_tls_client(vm_etcd):
    import asyncio
    key = vm_store()["prefix"].encode() + b"deploy-check-all"
    kv = vm_etcd.meshdns_client(vm_store()["endpoints"], timeout=5)
    assert asyncio.run(write_and_read(kv, key)) == [(key, b"written")]


def test_resolver_snippets_send_consul_names_to_meshdns():
    resolv = [line.split() for line in (VM / "resolv.conf").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ["search", "service.consul"] in resolv
    assert [w[0] for w in resolv].count("nameserver") >= 1
    resolved = unit("resolved-meshdns.conf")["Resolve"]
    assert resolved["DNS"].split() and "~consul" in resolved["Domains"].split()
    assert "service.consul" in resolved["Domains"].split()


def test_resolv_conf_search_domain_resolves_bare_names_through_meshdns(server, tmp_path):
    text = (VM / "resolv.conf").read_text()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(re.sub(r"^nameserver .*$", "nameserver 127.0.0.1", text, flags=re.M))
    resolver = dns.resolver.Resolver(filename=str(resolv))
    resolver.port = server.dns_port
    resolver.lifetime = 5
    answer = resolver.resolve("legacy-billing", "A", search=True)
    assert answer.qname.to_text() == "legacy-billing.service.consul."
    assert sorted(r.address for r in answer) == ["192.168.28.213", "192.168.28.214"]


# -- the register script -----------------------------------------------------------------

SCRIPT = VM / "meshdns-register.sh"


def test_register_script_passes_bash_n_and_shellcheck():
    out = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stderr) == (0, "")
    out = subprocess.run([tool("shellcheck"), "--severity=style", str(SCRIPT)],
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")
    assert os.access(SCRIPT, os.X_OK)


class AgentStub:
    """The agent endpoints the script uses, in Consul's shapes, recording each request."""

    def __init__(self):
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.services: dict[str, dict] = {}
        self.lock = threading.RLock()
        # Set stall_passes to make check passes hang (a server that stopped answering).
        self.stall_passes, self.stalled, self.unstall = threading.Event(), threading.Event(), threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if stub.stall_passes.is_set() and "/check/pass/" in self.path:
                    stub.stalled.set()
                    stub.unstall.wait(60)
                with stub.lock:
                    stub.requests.append(("PUT", self.path, dict(self.headers), body))
                    status = stub.handle(self.path, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def handle(self, path: str, body: bytes) -> int:
        if path == "/v1/agent/service/register":
            service = json.loads(body)
            self.services[service.get("ID") or service["Name"]] = service
            return 200
        if m := re.fullmatch(r"/v1/agent/check/pass/service:(.+)", path):
            return 200 if m.group(1) in self.services else 404
        if m := re.fullmatch(r"/v1/agent/service/deregister/(.+)", path):
            return 200 if self.services.pop(m.group(1), None) else 404
        return 400

    def paths(self) -> list[str]:
        with self.lock:
            return [p for _, p, _, _ in self.requests]

    def wait_for(self, predicate, what: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; requests: {self.paths()}")

    def close(self):
        self.unstall.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def agents():
    stubs = [AgentStub(), AgentStub()]
    yield stubs
    for stub in stubs:
        stub.close()


def script_env(servers: list[AgentStub], **extra: str) -> dict[str, str]:
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed (apt-get install curl)")
    return {**os.environ, "MESHDNS_ADDR": " ".join(s.url for s in servers), "MESHDNS_TOKEN": 's3"cr\\3t',
            "SERVICE_FILE": str(VM / "service.json"), "HEARTBEAT_INTERVAL": "0.2", "RETRY_INTERVAL": "0.2",
            **extra}


@contextlib.contextmanager
def register_script_running(env: dict[str, str]):
    """`meshdns-register run`, killed if the test ends before it stops."""
    proc = subprocess.Popen(["bash", str(SCRIPT), "run"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop_register_script(proc: subprocess.Popen) -> str:
    """SIGTERM, as systemd stops the unit: it must exit 0 within 10 s. Returns its log."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log = proc.stderr.read()
    assert proc.returncode == 0, log
    return log


def test_register_script_registers_keeps_passing_reregisters_and_deregisters_on_stop(agents):
    hostname = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    service_id = f"legacy-billing-{hostname}"
    pass_path = f"/v1/agent/check/pass/service:{service_id}"
    with register_script_running(script_env(agents)) as proc:
        for stub in agents:
            stub.wait_for(lambda: stub.paths().count(pass_path) >= 3, "three passes")
        first = agents[0]
        _, _, headers, body = first.requests[0]
        assert first.paths()[0] == "/v1/agent/service/register"
        assert headers["X-Consul-Token"] == 's3"cr\\3t'
        registered = json.loads(body)
        template = json.loads((VM / "service.json").read_text())
        # @ADDRESS@ becomes the address this host uses towards meshdns (loopback here).
        assert registered == {**template, "ID": service_id, "Address": "127.0.0.1"}
        # The server loses the registration (say its data dir was wiped): it comes back.
        with first.lock:
            first.services.clear()
            seen = len(first.requests)
        first.wait_for(lambda: "/v1/agent/service/register" in [p for _, p, _, _ in first.requests[seen:]]
                       and first.services, "registering again")
        first.wait_for(lambda: [p for _, p, _, _ in first.requests[-1:]] == [pass_path], "passing again")
        log = stop_register_script(proc)
    for stub in agents:
        assert stub.paths()[-1] == f"/v1/agent/service/deregister/{service_id}"
        assert stub.services == {}
    assert "s3" not in log, "the token is never logged"
    assert f"registered {service_id} at {agents[0].url}" in log


def test_register_script_keeps_trying_a_server_that_is_down_at_boot(agents):
    down, up = agents
    down_url = down.url
    down.close()
    env = script_env([up], SERVICE_ADDRESS="10.1.2.3", SERVICE_ID="billing-vm-7", HEARTBEAT_INTERVAL="0")
    env["MESHDNS_ADDR"] = f"{down_url} {up.url}"
    with register_script_running(env) as proc:
        up.wait_for(lambda: up.services, "registration at the server that is up")
        # HEARTBEAT_INTERVAL=0: no TTL to pass (e.g. an HTTP check run by meshdns).
        assert [s["Address"] for s in up.services.values()] == ["10.1.2.3"]
        time.sleep(0.5)
        assert "/v1/agent/check/pass/service:billing-vm-7" not in up.paths()
        log = stop_register_script(proc)
    assert f"register billing-vm-7 at {down_url} failed: HTTP 000" in log
    assert up.paths()[-1] == "/v1/agent/service/deregister/billing-vm-7"


def test_register_script_stops_at_once_while_a_request_hangs_and_leaves_nothing_running(agents):
    stub = agents[0]
    env = script_env([stub], SERVICE_ADDRESS="10.1.2.3", SERVICE_ID="billing-vm-8", REQUEST_TIMEOUT="60")
    with register_script_running(env) as proc:
        stub.wait_for(lambda: "/v1/agent/check/pass/service:billing-vm-8" in stub.paths(), "a pass")
        stub.stall_passes.set()
        assert stub.stalled.wait(15), "the next pass never came"
        # A curl is now waiting on the server (for up to 60 s); stopping must not wait for it.
        stop_register_script(proc)
    assert stub.paths()[-1] == "/v1/agent/service/deregister/billing-vm-8"
    assert not processes_mentioning(stub.url), "a curl from the stopped script is still running"


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def test_register_script_one_shot_commands_report_failure(agents):
    stub = agents[0]
    env = script_env([stub], SERVICE_ADDRESS="10.1.2.3")
    out = subprocess.run(["bash", str(SCRIPT), "pass"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "HTTP 404" in out.stderr
    out = subprocess.run(["bash", str(SCRIPT), "register"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and len(stub.services) == 1
    out = subprocess.run(["bash", str(SCRIPT), "bogus"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "usage" in out.stderr
