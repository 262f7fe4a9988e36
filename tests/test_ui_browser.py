"""The web page in Debian's Chromium (Playwright), against a real `meshdns serve` with a zones dir.

Every test also proves the page asked no host but meshdns and logged no console error
(the `tab` fixture checks both when the test ends).
"""
import re
from dataclasses import dataclass, field

import pytest
from playwright.sync_api import expect

from browser import CONFIG, V2_CHECK, Estate, Recorder, chromium
from harness import api, metric_samples, query

expect.set_options(timeout=20_000)   # a loaded 2-core machine; every wait ends as soon as the page is right


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def estate(tmp_path):
    e = Estate(tmp_path).start()
    yield e
    e.stop()


@dataclass
class Tab:
    page: object
    recorder: Recorder
    base: str
    allowed_errors: list = field(default_factory=list)

    def goto(self, path: str) -> None:
        self.page.goto(self.base + path)


def open_tab(browser, base, *, width=1280, height=800):
    context = browser.new_context(viewport={"width": width, "height": height})
    recorder = Recorder(context)
    page = context.new_page()
    recorder.watch(page)
    return Tab(page, recorder, base)


def close_tab(tab: Tab) -> None:
    tab.page.context.close()
    elsewhere = [url for url in tab.recorder.urls() if not url.startswith(tab.base + "/")]
    assert elsewhere == [], f"the page asked another host: {elsewhere}"
    assert tab.recorder.errors == tab.allowed_errors, tab.recorder.errors


@pytest.fixture
def tab(browser, estate):
    t = open_tab(browser, estate.base)
    yield t
    close_tab(t)


def service_row(page, name):
    return page.locator("table.list tbody tr", has=page.get_by_role("link", name=name, exact=True))


def target_row(page, target):
    return page.locator(f'tr[data-target="{target}"]')


def test_services_from_zone_files_and_the_api_follow_registrations_and_filter_by_search(tab, estate):
    page = tab.page
    tab.goto("/ui/")
    legacy, billing = service_row(page, "legacy-billing"), service_row(page, "billing")
    expect(legacy).to_contain_text("zones 2")
    expect(billing).to_contain_text("registrations 1")
    expect(billing.locator("td").nth(1)).to_have_text("1")          # passing
    expect(page.locator("table.list thead")).to_contain_text("passingwarningcritical")
    estate.register({"Name": "reports", "Address": "127.0.0.41", "Port": 9000, "Tags": ["batch"]})
    expect(service_row(page, "reports")).to_contain_text("registrations 1")       # no reload
    estate.check(V2_CHECK, "critical", "connection refused")
    expect(billing.locator("td").nth(3)).to_have_text("1")          # critical
    page.get_by_label("Search").fill("legacy")
    expect(page.locator("table.list tbody tr")).to_have_count(1)
    expect(page.locator(".count")).to_have_text("1 service matching “legacy”, showing 1–1")
    page.get_by_label("Search").fill("batch")                      # tags match too
    expect(page.locator("table.list tbody tr")).to_have_count(1)
    expect(service_row(page, "reports")).to_be_visible()


def test_a_service_shows_instances_zones_weights_and_check_output(tab, estate):
    page = tab.page
    tab.goto("/ui/#/service/billing")
    card = page.locator("article.instance", has_text="billing-v2-1")
    expect(card.locator("pre.output")).to_have_text("HTTP GET /health: 200 OK in 12 ms")
    for text in ("10.2.0.1", "8080", "eu-west-1a", "passing 1, warning 1", "v2", "version=2.0.0, zone=eu-west-1a"):
        expect(card).to_contain_text(text)
    expect(card.locator("h2 .health")).to_have_text("passing")
    estate.check(V2_CHECK, "warning", "HTTP GET /health: 429 Too Many Requests")
    expect(card.locator("pre.output")).to_have_text("HTTP GET /health: 429 Too Many Requests")   # no reload
    expect(card.locator("h2 .health")).to_have_text("warning")
    page.get_by_role("link", name="Services").first.click()
    page.get_by_role("link", name="legacy-billing", exact=True).click()
    vm2 = page.locator("article.instance", has_text="billing-vm-2")
    for text in ("192.168.28.214", "eu-west-1b", "passing 10, warning 1", "team=payments"):  # zone: node meta
        expect(vm2).to_contain_text(text)


def test_a_split_shows_weights_shares_and_answers_and_follows_a_failing_side(tab, estate):
    page = tab.page
    tab.goto("/ui/#/splits")
    legacy, v2 = target_row(page, "legacy-billing"), target_row(page, "billing:v2")
    expect(legacy.locator("td.weight")).to_have_text("90")
    expect(legacy.locator("td.share")).to_have_text("90.0%")
    expect(v2.locator("td.weight")).to_have_text("10")
    expect(v2.locator("td.share")).to_have_text("10.0%")
    for _ in range(40):
        assert query(estate.server.dns_port, "billing.service.consul").answer
    samples = metric_samples(estate.base)
    counted = {t: int(samples.get(("meshdns_split_answers_total", (("split", "billing"), ("target", t))), 0))
               for t in ("legacy-billing", "billing:v2")}
    assert sum(counted.values()) == 40
    expect(legacy.locator("td.answers")).to_have_text(str(counted["legacy-billing"]))  # at the next sample
    expect(v2.locator("td.answers")).to_have_text(str(counted["billing:v2"]))
    expect(page.locator("svg.chart polyline").first).to_be_attached()
    estate.fail(V2_CHECK, "no heartbeat")          # the new side's TTL check fails: its share goes to the VMs
    expect(legacy.locator("td.share")).to_have_text("100.0%")
    expect(v2.locator("td.share")).to_have_text("0.0%")
    expect(v2.locator("td.weight")).to_have_text("10")                # configured: unchanged
    expect(page.locator("section.split")).to_contain_text("healthy targets: legacy-billing ·")


def test_weights_change_with_a_token_after_a_confirmation_and_are_refused_without_one(tab, estate):
    page = tab.page
    tab.goto("/ui/#/splits")
    expect(page.get_by_text("Read-only: enter a token above to change the weights.")).to_be_visible()
    expect(page.locator("section.split input")).to_have_count(0)
    expect(page.get_by_role("button", name="Save")).to_have_count(0)

    def propose(token, legacy, new):
        page.get_by_label("Token").fill(token)
        page.get_by_label("Token").press("Tab")
        page.get_by_label("New weight for legacy-billing").fill(str(legacy))
        page.get_by_label("New weight for billing:v2").fill(str(new))
        expect(page.locator(".sum")).to_have_text("Total 100 of 100")
        page.get_by_role("button", name="Save").click()
        expect(page.locator(".confirm")).to_contain_text(
            f"Change billing: legacy-billing 90 → {legacy}, billing:v2 10 → {new}?")
        page.get_by_role("button", name="Confirm").click()

    propose("viewer-token", 50, 50)       # a token that may not write billing
    expect(page.locator(".result")).to_have_text(
        "Not saved. Refused (403): Permission denied: token lacks service:write on 'billing'")
    tab.allowed_errors = ["Failed to load resource: the server responded with a status of 403 (Forbidden)"]
    entry = api(estate.base, "GET", "/v1/config/service-splitter/billing").json()
    assert [s["Weight"] for s in entry["Splits"]] == [90, 10]

    propose("ops-token", 50, 50)
    expect(page.locator(".result")).to_have_text("Saved: billing is now legacy-billing 50, billing:v2 50.")
    expect(target_row(page, "legacy-billing").locator("td.weight")).to_have_text("50")
    expect(target_row(page, "billing:v2").locator("td.share")).to_have_text("50.0%")
    entry = api(estate.base, "GET", "/v1/config/service-splitter/billing").json()
    assert [(s["Service"], s.get("ServiceSubset"), s["Weight"]) for s in entry["Splits"]] == [
        ("legacy-billing", None, 50), ("billing", "v2", 50)]
    assert entry["Meta"]["meshdns-source"] == "config"
    # the token: in the tab's session storage and the X-Consul-Token header, never in a URL or a log line
    assert page.evaluate("sessionStorage.getItem('meshdns-token')") == "ops-token"
    puts = [headers for method, _, headers in tab.recorder.requests if method == "PUT"]
    assert [h.get("x-consul-token") for h in puts] == ["viewer-token", "ops-token"]
    assert not [url for url in tab.recorder.urls() if "token" in url]
    assert "ops-token" not in estate.server.stderr() and "viewer-token" not in estate.server.stderr()


def test_topology_shows_who_resolved_whom_from_bound_source_addresses(tab, estate):
    page = tab.page
    estate.register({"Name": "web", "Address": "127.0.0.21", "Port": 80})
    for source, name, n in [("127.0.0.11", "billing", 5), ("127.0.0.12", "billing", 3),
                            ("127.0.0.21", "legacy-billing", 4)]:
        for _ in range(n):
            query(estate.server.dns_port, f"{name}.service.consul", source=source)
    body = api(estate.base, "GET", "/v1/meshdns/topology?window=15m").json()
    assert {(e["source"], e["target"]): e["count"] for e in body["edges"]} == {
        ("127.0.0.0/24", "billing"): 8, ("web", "legacy-billing"): 4}
    tab.goto("/ui/#/topology")
    graph = page.locator("svg.graph")
    for name in ("127.0.0.0/24", "billing", "web", "legacy-billing"):
        expect(graph.locator(".node text", has_text=name).first).to_be_visible()
    rates = {e["target"]: e["rate_per_min"] for e in body["edges"]}
    expect(graph.locator(".edge .rate")).to_have_text([f"{rates['billing']:g}/min", f"{rates['legacy-billing']:g}/min"])
    rows = page.locator("table.edges tbody tr")
    expect(rows.nth(0)).to_have_text(f"127.0.0.0/24billing8{rates['billing']:g}no")
    expect(rows.nth(1)).to_have_text(f"weblegacy-billing4{rates['legacy-billing']:g}no")
    page.get_by_label("Window").select_option("1m")
    expect(page.locator(".toolbar")).to_contain_text("Last 1m")


def test_denied_edges_are_marked(browser, tmp_path):
    """With intention views on, a client DNS refused shows as a denied edge; an allowed one does not."""
    views = ('[[service]]\nname = "db"\naddress = "10.3.0.1"\nport = 5432\n\n'
             '[[intention]]\nname = "db"\nsources = [ { name = "web", action = "deny" } ]\n')
    estate = Estate(tmp_path, extra_zones={"views.toml": views},
                    config=CONFIG.replace("rng_seed = 7", "rng_seed = 7\nenforce_intentions = true")).start()
    tab = open_tab(browser, estate.base)
    page = tab.page
    try:
        estate.register({"Name": "web", "Address": "127.0.0.21", "Port": 80})
        for _ in range(3):
            assert query(estate.server.dns_port, "db.service.consul", source="127.0.0.21").rcode() == 3  # NXDOMAIN
            assert query(estate.server.dns_port, "db.service.consul", source="127.0.0.12").answer
        tab.goto("/ui/#/topology")
        expect(page.locator("svg.graph .edge.denied .rate")).to_have_count(1)
        expect(page.locator("table.edges tr.denied")).to_have_text(re.compile(r"^webdb3.*denied$"))
        expect(page.locator("table.edges tbody tr:not(.denied)")).to_have_text(re.compile(r"^127\.0\.0\.0/24db3.*no$"))
    finally:
        close_tab(tab)
        estate.stop()


def test_sources_peers_and_datacenters(tab):
    page = tab.page
    tab.goto("/ui/#/sources")
    for source in ("config", "registrations", "zones"):
        expect(page.locator(f'tr[data-source="{source}"] td').first).to_have_text("synced")
    expect(page.locator(".summary")).to_have_text("Ready: every source has synced.")
    expect(page.locator("ul.dcs")).to_have_text("dc1 (this server's)")


def test_keyboard_reaches_every_view_and_every_control_is_labelled(tab):
    page = tab.page
    tab.goto("/ui/")
    expect(service_row(page, "billing")).to_be_visible()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Splits"
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Splits", level=1)).to_be_visible()
    unlabelled = """() => [...document.querySelectorAll("input, select, button")]
        .filter((el) => !(el.labels?.length || el.getAttribute("aria-label") || el.textContent.trim()))
        .map((el) => el.outerHTML)"""
    for view in ("#/services", "#/splits", "#/topology", "#/sources", "#/service/billing"):
        tab.goto("/ui/" + view)
        page.wait_for_selector("main h1")
        assert page.evaluate(unlabelled) == [], view
    page.get_by_label("Token").fill("ops-token")
    page.get_by_label("Token").press("Tab")
    tab.goto("/ui/#/splits")
    expect(page.get_by_label("New weight for legacy-billing")).to_be_visible()
    assert page.evaluate(unlabelled) == []


LAYOUT_SHIFTS = """
window.__shift = 0;
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) if (!entry.hadRecentInput) window.__shift += entry.value;
}).observe({type: "layout-shift", buffered: true});
"""


@pytest.mark.parametrize("width, height", [(1280, 800), (390, 844)])
def test_readable_at_desktop_and_phone_width_without_layout_shift(browser, estate, width, height):
    tab = open_tab(browser, estate.base, width=width, height=height)
    page = tab.page
    page.add_init_script(LAYOUT_SHIFTS)
    try:
        for view, ready in (("#/services", "table.list tbody tr"), ("#/splits", "td.share"),
                            ("#/service/billing", "pre.output"), ("#/sources", "ul.dcs li")):
            tab.goto("/ui/" + view)
            page.wait_for_selector(ready)
            page.wait_for_timeout(300)
            assert page.evaluate("window.__shift") < 0.01, (view, page.evaluate("window.__shift"))
            assert page.evaluate("document.documentElement.scrollWidth") <= width, view   # nothing off-screen
    finally:
        close_tab(tab)


def many_services(n):
    return "".join(f'[[service]]\nname = "svc-{i:05d}"\naddress = "10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"\n'
                   f'port = 8080\ntags = ["t{i % 7}"]\n\n' for i in range(n))


@pytest.mark.parametrize("count", [1_000, 10_000])
def test_the_list_pages_many_services_and_searches_them(browser, tmp_path, count):
    """Only one page of rows is in the document, whatever the catalog's size (so the page stays responsive).
    The paint and search times are printed (figures for the README), not asserted: no timed tests."""
    estate = Estate(tmp_path, extra_zones={"many.toml": many_services(count)}).start(register=False)
    tab = open_tab(browser, estate.base)
    page = tab.page
    try:
        tab.goto("/ui/")
        page.wait_for_selector("table.list tbody tr")
        drawn = page.evaluate("performance.getEntriesByName('meshdns:services-drawn')[0].startTime")
        print(f"{count} services: list drawn {drawn:.0f} ms after navigation")
        expect(page.locator(".count")).to_have_text(f"{count + 2:,} services, showing 1–100")
        assert page.locator("table.list tbody tr").count() == 100          # one page in the document
        page.get_by_role("button", name="Next page").click()
        expect(page.locator(".count")).to_have_text(f"{count + 2:,} services, showing 101–200")
        took = page.evaluate("""() => {
            const input = document.getElementById("search");
            const started = performance.now();
            input.value = "svc-0099";
            input.dispatchEvent(new Event("input"));
            return performance.now() - started;
        }""")
        print(f"{count} services: search redrawn in {took:.1f} ms")
        expect(page.locator("table.list tbody tr")).to_have_count(10)      # svc-00990 ... svc-00999
    finally:
        close_tab(tab)
        estate.stop()


def test_a_migration_watched_and_driven_from_the_page(tab, estate):
    """90/10 -> 50/50 -> 0/100 from the splits page, and the clients that still ask for the old side."""
    page = tab.page
    estate.register({"Name": "reports", "Address": "127.0.0.31", "Port": 9000})
    tab.goto("/ui/")
    page.get_by_label("Token").fill("ops-token")
    page.get_by_label("Token").press("Tab")
    page.get_by_role("link", name="Splits").click()
    legacy, v2 = target_row(page, "legacy-billing"), target_row(page, "billing:v2")
    expect(legacy.locator("td.share")).to_have_text("90.0%")
    for legacy_weight, new_weight in ((50, 50), (0, 100)):
        page.get_by_label("New weight for legacy-billing").fill(str(legacy_weight))
        page.get_by_label("New weight for billing:v2").fill(str(new_weight))
        page.get_by_role("button", name="Save").click()
        page.get_by_role("button", name="Confirm").click()
        expect(legacy.locator("td.share")).to_have_text(f"{legacy_weight:.1f}%")
        expect(v2.locator("td.share")).to_have_text(f"{new_weight:.1f}%")
    for _ in range(20):   # clients of the split name now get the new side only
        reply = query(estate.server.dns_port, "billing.service.consul", source="127.0.0.11")
        assert [rd.to_text() for rrset in reply.answer for rd in rrset] == ["10.2.0.1"]
    for _ in range(3):    # ... while reports still asks for the old side by its own name
        query(estate.server.dns_port, "legacy-billing.service.consul", source="127.0.0.31")
    expect(v2.locator("td.answers")).to_have_text("20")
    expect(legacy.locator("td.answers")).to_have_text("0")
    page.get_by_role("link", name="Topology").click()
    expect(page.locator("table.edges tbody tr")).to_have_text(
        [re.compile(r"^127\.0\.0\.0/24billing20[\d.]+no$"), re.compile(r"^reportslegacy-billing3[\d.]+no$")])
