"""The runner against real local servers: many checks spread over their interval, bounded in flight."""
import asyncio
import time

from aiohttp import web

from meshdns.catalog.model import Health
from meshdns.health.runner import HealthRunner
from meshdns.health.spec import parse_check


async def test_first_probes_are_spread_over_the_interval():
    """500 TCP checks registered at once: their first connects spread over the 1 s interval."""
    connects: list[float] = []

    async def accept(reader, writer):
        connects.append(time.monotonic())
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    runner = HealthRunner(concurrency=64)
    changes = []
    runner.register_owner("t", on_change=lambda key, old, new: changes.append(key))
    spec = parse_check({"TCP": f"127.0.0.1:{port}", "Interval": "1s"})
    task = asyncio.create_task(runner.run())
    start = time.monotonic()
    for i in range(500):
        runner.add("t", i, spec)
    try:
        deadline = start + 10
        while len(set(changes)) < 500 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.close()
    first = sorted(connects)[:500]
    windows = [sum(1 for t in first if w * 0.1 <= t - start < (w + 1) * 0.1) for w in range(10)]
    print(f"\nfirst probes per 100 ms window: {windows}")
    assert len(set(changes)) == 500
    assert max(windows) < 150, "checks stampeded instead of spreading over the interval"
    assert first[-1] - first[0] > 0.5
    assert all(runner.state("t", i).status is Health.PASSING for i in range(500))


async def test_probes_in_flight_are_bounded():
    in_flight = peak = 0

    async def slow(request):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.2)
        in_flight -= 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", slow)
    http = web.AppRunner(app)
    await http.setup()
    site = web.TCPSite(http, "127.0.0.1", 0)
    await site.start()
    port = http.addresses[0][1]
    runner = HealthRunner(concurrency=5)
    runner.register_owner("t", on_change=lambda *a: None)
    spec = parse_check({"HTTP": f"http://127.0.0.1:{port}/", "Interval": "0.1s", "Timeout": "5s"})
    for i in range(40):
        runner.add("t", i, spec)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.sleep(1.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await http.cleanup()
    print(f"\npeak probes in flight: {peak} (limit 5), probes run: {runner.probes_run}")
    assert 1 <= peak <= 5
    assert runner.probes_run >= 20


async def test_removed_checks_stop_and_readded_checks_do_not_double():
    connects = []

    async def accept(reader, writer):
        connects.append(time.monotonic())
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    runner = HealthRunner()
    runner.register_owner("t", on_change=lambda *a: None)
    spec = parse_check({"TCP": f"127.0.0.1:{port}", "Interval": "0.1s"})
    task = asyncio.create_task(runner.run())
    try:
        runner.add("t", "a", spec)
        runner.remove("t", "a")
        runner.add("t", "a", spec)
        await asyncio.sleep(1.0)
        one_check = len(connects)
        runner.remove("t", "a")
        await asyncio.sleep(0.3)
        after_removal = len(connects) - one_check
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.close()
    assert 3 <= one_check <= 13, one_check  # ~one probe per 0.1 s (10), not two chains (20)
    assert after_removal <= 1
