"""Components and the one exit stack that starts, runs and closes them.

A component is one part of the running server as the lifecycle sees it: how
it starts, its long-running task, how it closes, what SIGHUP does to it and
what it tells /readyz. Every step is optional. `serve_components` starts them
in the order given (dependencies first), runs their tasks in one TaskGroup
until told to stop or until a task dies, and closes each exactly once, in
reverse order, whatever happened (a start that fails included). A component
never closes itself at the end of its own task: closing is the lifecycle's.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from .sources.status import SourceStatus

log = logging.getLogger("meshdns")


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    start: Callable[[], Awaitable[None]] | None = None     # awaited before the server says it is ready
    run: Callable[[], Awaitable[None]] | None = None       # the component's task; it dying stops the server
    close: Callable[[], Awaitable[None]] | None = None     # awaited once, after every task has ended
    reload: Callable[[], None] | None = None               # SIGHUP
    readiness: Callable[[], SourceStatus] | None = None    # its /readyz entry, under `name`


class ComponentFailed(Exception):
    """A component's task raised: the server stops, and this names the component and the error."""

    def __init__(self, name: str, error: BaseException):
        super().__init__(f"{name} failed: {type(error).__name__}: {error}")
        self.name, self.error = name, error


async def serve_components(components: Sequence[Component], *, stop: asyncio.Event,
                           on_started: Callable[[], None] | None = None) -> None:
    """Start, run until `stop` is set or a task dies (ComponentFailed), close; each close runs once."""
    async with AsyncExitStack() as stack:
        for component in components:  # every component built is closed, started or not (or half-started)
            if component.close is not None:
                stack.push_async_callback(_close, component)
        for component in components:
            if component.start is not None:
                await component.start()
        try:
            async with asyncio.TaskGroup() as tasks:
                running = [tasks.create_task(_supervised(c), name=c.name) for c in components if c.run]
                if on_started is not None:
                    on_started()
                await stop.wait()
                log.info("stopping")
                for task in running:
                    task.cancel()
        except BaseExceptionGroup as group:  # the first task that died stops the server; it says why
            first, *others = _leaves(group)
            for other in others:
                log.error("also: %s", other, exc_info=other)
            raise first from first.__cause__


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    return [leaf for e in group.exceptions
            for leaf in (_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])]


async def _supervised(component: Component) -> None:
    try:
        await component.run()
    except Exception as exc:
        raise ComponentFailed(component.name, exc) from exc


async def _close(component: Component) -> None:
    """One close failing must not keep the others from running."""
    try:
        await component.close()
    except Exception:
        log.exception("closing %s failed", component.name)


def reload_all(components: Sequence[Component]) -> None:
    log.info("reload requested")
    for component in components:
        if component.reload is not None:
            try:
                component.reload()
            except Exception:
                log.exception("reloading %s failed; previous state kept", component.name)


def readiness(components: Sequence[Component]) -> dict[str, Callable[[], SourceStatus]]:
    return {c.name: c.readiness for c in components if c.readiness is not None}
