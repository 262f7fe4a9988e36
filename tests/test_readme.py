"""The README's promises: two quick-start commands (the second is what CI runs), dig examples that work,
`meshdns query` for machines without dig, and a strangler-fig walkthrough that runs without a cluster."""
import re
import shlex
import subprocess

from harness import ROOT, api, dig

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_second():
    quick = section("Quick start").split("The server prints")[0]
    blocks = re.findall(r"```sh\n(.*?)```", quick, re.S)
    commands = [line for block in blocks for line in block.strip().splitlines()]
    assert len(commands) == 2, commands
    run, test = commands
    assert "meshdns serve" in run and "pip install" in run
    ci = (ROOT / ".ci" / "run").read_text()
    assert test.replace("pip install -e", "pip install -q -e") in ci


def test_ci_and_tool_scripts_pass_shellcheck():
    from test_deploy import tool
    for script in (ROOT / "tests" / "install-tools.sh", ROOT / ".ci" / "run"):
        out = subprocess.run([tool("shellcheck"), "--severity=style", str(script)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout


def test_every_dig_example_in_names_answers_from_the_shipped_zones(server):
    lines = [line.split("#")[0].strip() for line in section("Names").splitlines()
             if line.startswith("dig @127.0.0.1 -p 8600 ")]
    assert len(lines) >= 10
    for line in lines:
        args = shlex.split(line)[3:]  # drop dig @127.0.0.1 -p 8600
        args = [a for a in args if a not in ("+short",)]
        out = dig(server.dns_port, *args, "+noall", "+comments", "+answer")
        assert "status: NOERROR" in out, (line, out)
        answers = [a for a in out.splitlines() if a and not a.startswith(";")]
        assert answers, (line, out)


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def run_sh(block: str, tmp_path, *, dns_port: int, http_port: int) -> str:
    """Run a README shell block against a test server: its ports put in, `meshdns` being this tree's."""
    import os
    import sys
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "meshdns"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m meshdns "$@"\n')
    wrapper.chmod(0o755)
    block = block.replace("http://127.0.0.1:8500", f"http://127.0.0.1:{http_port}")
    block = block.replace("meshdns query ", f"meshdns query --server 127.0.0.1:{dns_port} ")
    block = block.replace("@127.0.0.1 -p 8600 ", f"@127.0.0.1 -p {dns_port} ")
    out = subprocess.run(["sh", "-ec", block], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert out.returncode == 0, (block, out.stderr)
    return out.stdout


def test_try_it_works_without_dig(server, tmp_path):
    try_it = section("Quick start").split("The server prints")[1]
    (block,) = [b for b in sh_blocks(try_it)]
    assert block.startswith("meshdns query ") and "dig" not in block
    out = run_sh(block, tmp_path, dns_port=server.dns_port, http_port=server.http_port)
    assert "status: NOERROR" in out
    answers = out.split(";; ANSWER SECTION:\n")[1].split("\n\n")[0].splitlines()
    assert len(answers) == 2 and all(" SRV " in a.replace("\t", " ") for a in answers), out


def test_the_strangler_fig_walkthrough_runs_on_a_laptop(start_server, tmp_path):
    """Every shell step of the walkthrough against the quick start's server (the shipped zones/, no cluster).
    A step whose health check would probe a non-loopback address is not run here (the tests stay on
    loopback); the walkthrough says it may be skipped on a laptop."""
    srv = start_server({"dns": {"rng_seed": 11}})
    ports = {"dns_port": srv.dns_port, "http_port": srv.http_port}
    probing = re.compile(r'"HTTP": "http://(?!127\.)')
    blocks = sh_blocks(section("Splits: the strangler-fig migration"))
    skipped = [b for b in blocks if probing.search(b)]
    assert len(skipped) == 1 and "legacy-billing" in skipped[0]
    outputs = [run_sh(b, tmp_path, **ports) for b in blocks if not probing.search(b)]
    assert len(outputs) == 3   # the stand-in, the 90/10 split, watching it
    splitter = api(srv.http, "GET", "/v1/config/service-splitter/billing").json()
    assert [(s["Service"], s["Weight"]) for s in splitter["Splits"]] == [("legacy-billing", 90), ("billing", 10)]
    counts = {line.split()[1]: int(line.split()[0]) for line in outputs[-1].splitlines()
              if re.fullmatch(r"\s*\d+ [\d.]+", line)}
    # one side per answer: both VMs together, or the stand-in pod
    assert set(counts) <= {"192.168.28.213", "192.168.28.214", "10.244.1.5"}, counts
    vm_answers, pod_answers = counts.get("192.168.28.213", 0), counts.get("10.244.1.5", 0)
    assert counts.get("192.168.28.214", 0) == vm_answers and vm_answers + pod_answers == 20, counts
    assert vm_answers > pod_answers, counts
    assert "# TYPE meshdns_split_answers_total counter" in outputs[-1]
    counted = re.findall(r'meshdns_split_answers_total\{split="billing",target="[^"]+"\} (\d+)',
                         api(srv.http, "GET", "/metrics").text)
    assert sorted(int(float(n)) for n in counted if float(n)) == sorted(n for n in (vm_answers, pod_answers) if n)


def test_locality_and_views_examples_are_valid_config_and_zone_files():
    from meshdns.config import parse_config
    from meshdns.sources.zonefiles import parse_toml
    import tomllib

    blocks = re.findall(r"```toml\n(.*?)```", section("Locality and views"), re.S)
    config, zone_file = blocks
    cfg = parse_config(tomllib.loads(config))
    assert cfg.dns.prefer_same_zone and cfg.dns.enforce_intentions and cfg.dns.same_zone_min == 2
    assert cfg.localities == (("10.20.0.0/16", "eu-west-1a"), ("10.21.0.0/16", "eu-west-1b"))
    content = parse_toml("README.md", zone_file, datacenter="dc1", source="zones")
    assert [(s.name, s.action) for s in content.intentions[0].sources] == [("web", "deny"), ("*", "allow")]


def test_the_locality_and_views_worked_example_runs_as_written(start_server, tmp_path):
    """The worked example against a server started with its views.toml: each dig line prints what its comment
    says (addresses in any order; SRV priorities; the status line)."""
    import tomllib

    text = section("Locality and views").split("**Worked example**")[1]
    serve, *blocks = sh_blocks(text)
    config = tomllib.loads(re.search(r"<<'TOML'\n(.*?)TOML", serve, re.S).group(1))
    srv = start_server(config, zones=tmp_path / "zones")
    ports = {"dns_port": srv.dns_port, "http_port": srv.http_port}
    checked = 0
    for block in blocks:
        for step in re.split(r"\n(?=dig |curl )", block.strip()):
            out = run_sh(step, tmp_path, **ports) if "| grep -E" not in step else ""
            comment = step.split("#", 1)[1] if step.startswith("dig ") else ""
            if "NXDOMAIN" in comment:
                assert "status: NXDOMAIN" in out, step
            elif " SRV " in step:
                prio = {line.split()[3]: int(line.split()[0]) for line in out.split("\n") if line}
                assert sorted(prio.values()) == [1, 2, 2] and prio["0a000207.addr.dc1.consul."] == 1, out
            elif comment:
                assert sorted(out.split()) == sorted(re.findall(r"\d+\.\d+\.\d+\.\d+", comment)), step
            checked += bool(comment)
    assert checked == 7
    metrics = run_sh(blocks[-1].strip().splitlines()[-1], tmp_path, **ports)
    assert 'meshdns_intention_denied_total{destination="db",source="web"} 1.0' in metrics


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_in_the_docs_reaches_a_file_and_heading():
    broken = []
    for doc in (ROOT / "README.md", ROOT / "SECURITY.md", *sorted((ROOT / "deploy").rglob("README.md"))):
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, fragment = target.partition("#")
            linked = (doc.parent / path) if path else doc
            if not linked.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
            elif fragment and linked.suffix == ".md":
                headings = {github_anchor(h) for h in re.findall(r"^#+ (.*)$", linked.read_text(), re.M)}
                if fragment not in headings:
                    broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken
