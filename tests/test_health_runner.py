"""The runner against real local servers, on a clock the test moves: first probes spread over the interval,
probes in flight bounded, a removed check stops. Counts and order, never wall-time windows."""
import asyncio
import random

from aiohttp import web

from meshdns.catalog.model import Health
from meshdns.health.runner import HealthRunner
from meshdns.health.spec import parse_check


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


async def settled(runner: HealthRunner) -> None:
    """Every probe started so far has finished (bounded: real sockets, a busy machine)."""
    for _ in range(2000):
        if runner.probes_run == runner.probes_started:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{runner.probes_started - runner.probes_run} probes still running after 20 s")


async def tcp_server(accepted: list):
    async def accept(reader, writer):
        accepted.append(1)
        writer.close()
    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_first_probes_are_spread_over_the_interval():
    """500 TCP checks registered at once, interval 10 s: their first probes start a few per second of the
    interval, not all at once."""
    accepted: list = []
    server, port = await tcp_server(accepted)
    clock = Clock()
    runner = HealthRunner(concurrency=64, rng=random.Random(5), clock=clock)
    changes = []
    runner.register_owner("t", on_change=lambda key, old, new: changes.append(key))
    spec = parse_check({"TCP": f"127.0.0.1:{port}", "Interval": "10s"})
    try:
        for i in range(500):
            runner.add("t", i, spec)
        assert runner.run_due() is not None and runner.probes_started == 0    # nothing is due at once
        per_second = []
        for _ in range(10):
            clock.now += 1.0
            before = runner.probes_started
            runner.run_due()
            per_second.append(runner.probes_started - before)
            await settled(runner)
    finally:
        await runner.close()
        server.close()
    print(f"\nfirst probes per second of the interval: {per_second}")
    assert sum(per_second) == 500 and len(accepted) == 500          # each check probed once in its interval
    assert max(per_second) <= 100 and min(per_second) >= 25, per_second   # about 50 a second, not a stampede
    assert len(set(changes)) == 500
    assert all(runner.state("t", i).status is Health.PASSING for i in range(500))


async def test_probes_in_flight_are_bounded():
    in_flight = peak = served = 0
    release = asyncio.Event()

    async def held(request):
        nonlocal in_flight, peak, served
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        served += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", held)
    http = web.AppRunner(app)
    await http.setup()
    site = web.TCPSite(http, "127.0.0.1", 0)
    await site.start()
    port = http.addresses[0][1]
    clock = Clock()
    runner = HealthRunner(concurrency=5, rng=random.Random(1), clock=clock)
    runner.register_owner("t", on_change=lambda *a: None)
    spec = parse_check({"HTTP": f"http://127.0.0.1:{port}/", "Interval": "1s", "Timeout": "60s"})
    try:
        for i in range(40):
            runner.add("t", i, spec)
        clock.now += 1.0
        runner.run_due()
        assert runner.probes_started == 40
        for _ in range(2000):               # the first five reach the server; the others wait their turn
            if in_flight == 5:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)            # give a sixth every chance to get through, were it not bounded
        assert in_flight == 5 and runner.probes_run == 0
        release.set()
        await settled(runner)
    finally:
        await runner.close()
        await http.cleanup()
    print(f"\npeak probes in flight: {peak} (limit 5), probes run: {runner.probes_run}")
    assert peak == 5 and served == 40 and runner.probes_run == 40


async def test_removed_checks_stop_and_readded_checks_do_not_double():
    accepted: list = []
    server, port = await tcp_server(accepted)
    clock = Clock()
    runner = HealthRunner(rng=random.Random(3), clock=clock)
    runner.register_owner("t", on_change=lambda *a: None)
    spec = parse_check({"TCP": f"127.0.0.1:{port}", "Interval": "1s"})
    try:
        runner.add("t", "a", spec)
        runner.remove("t", "a")
        runner.add("t", "a", spec)
        for _ in range(10):                 # ten intervals
            clock.now += 1.0
            runner.run_due()
            await settled(runner)
        one_check = len(accepted)
        runner.remove("t", "a")
        for _ in range(3):
            clock.now += 1.0
            runner.run_due()
            await settled(runner)
    finally:
        await runner.close()
        server.close()
    assert one_check == 10, one_check       # one probe per interval, not two chains (20)
    assert len(accepted) == one_check and runner.probes_started == 10


async def test_a_run_cancelled_just_as_it_is_woken_still_ends():
    """The server stops by cancelling this task; a check added in the same loop turn (a registration, a
    TTL update) must not swallow that cancellation and leave shutdown waiting for ever."""
    runner = HealthRunner(clock=Clock())
    runner.register_owner("t", on_change=lambda *a: None)
    runner.add("t", "a", parse_check({"TTL": "30s"}))   # something due later: it waits with a timeout
    task = asyncio.create_task(runner.run())
    for _ in range(5):
        await asyncio.sleep(0)            # parked, waiting to be woken
    runner.add("t", "b", parse_check({"TTL": "30s"}))   # wakes it...
    task.cancel()                                        # ... as the server stops
    done, _ = await asyncio.wait({task}, timeout=10)
    await runner.close()
    assert task in done and task.cancelled()
