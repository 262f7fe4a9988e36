"""Screenshots of the web page for the README: `python tests/ui_screenshots.py` (writes docs/ui-*.png).

A real meshdns on a small estate (the billing migration at 90/10), some DNS traffic from
bound loopback addresses, and Debian's Chromium at 1280x800 and 390x844.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from browser import Estate, chromium  # noqa: E402
from harness import query  # noqa: E402

DOCS = HERE.parent / "docs"
SHOTS = [  # (file, view, ready selector, width, height, token)
    ("ui-services.png", "#/services", "table.list tbody tr", 1280, 800, ""),
    ("ui-service.png", "#/service/billing", "pre.output", 1280, 800, ""),
    ("ui-splits.png", "#/splits", "svg.chart polyline", 1280, 800, "ops-token"),
    ("ui-topology.png", "#/topology", "svg.graph", 1280, 800, ""),
    ("ui-sources.png", "#/sources", "ul.dcs li", 1280, 800, ""),
    ("ui-services-phone.png", "#/services", "table.list tbody tr", 390, 844, ""),
    ("ui-splits-phone.png", "#/splits", "svg.chart polyline", 390, 844, ""),
]


def traffic(estate: Estate) -> None:
    estate.register({"Name": "web", "Address": "127.0.0.21", "Port": 80, "Tags": ["frontend"]})
    estate.register({"Name": "reports", "Address": "127.0.0.22", "Port": 9000, "Tags": ["batch"]})
    port = estate.server.dns_port
    for source, name, n in [("127.0.0.21", "billing", 40), ("127.0.0.22", "legacy-billing", 12),
                            ("127.0.0.11", "billing", 25), ("127.0.0.12", "redis", 9), ("127.0.1.7", "billing", 6)]:
        for _ in range(n):
            query(port, f"{name}.service.consul", source=source)


def main() -> int:
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, chromium() as browser:
        estate = Estate(Path(tmp)).start()
        try:
            traffic(estate)
            time.sleep(11)   # a second sample of the split answers: the chart has a line
            traffic(estate)
            for name, view, ready, width, height, token in SHOTS:
                context = browser.new_context(viewport={"width": width, "height": height})
                page = context.new_page()
                page.goto(estate.base + "/ui/")
                if token:
                    page.get_by_label("Token").fill(token)
                    page.get_by_label("Token").press("Tab")
                page.goto(estate.base + "/ui/" + view)
                page.wait_for_selector(ready, timeout=30_000)
                page.wait_for_timeout(300)
                page.screenshot(path=str(DOCS / name))
                context.close()
                print(f"docs/{name}")
        finally:
            estate.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
