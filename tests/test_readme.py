"""The README's promises: two quick-start commands (the second is what CI runs), and dig examples that work."""
import re
import shlex
import subprocess

from harness import ROOT, dig

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


def test_locality_and_views_examples_are_valid_config_and_zone_files():
    from meshdns.config import parse_config
    from meshdns.sources.zonefiles import parse_toml
    import tomllib

    blocks = re.findall(r"```toml\n(.*?)```", section("Locality and views"), re.S)
    config, zone_file = blocks
    cfg = parse_config(tomllib.loads(config))
    assert cfg.dns.prefer_same_zone and cfg.dns.enforce_intentions and cfg.dns.same_zone_min == 2
    assert cfg.localities == (("10.20.0.0/16", "eu-west-1a"), ("10.21.0.0/16", "eu-west-1b"))
    content = parse_toml("README.md", zone_file, datacenter="dc1", source="zones", revision=1)
    assert [(s.name, s.action) for s in content.intentions[0].sources] == [("web", "deny"), ("*", "allow")]
