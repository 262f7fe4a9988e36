"""What each source reports to /readyz: has it synced, and what is it complaining about."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True, slots=True)
class SourceStatus:
    synced: bool
    errors: dict[str, str] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)  # shown as is (e.g. connected, last_event_age)
    required: bool = True  # False: reported, but /readyz does not wait for it (another site's peer)


# name -> callable giving the source's current status; sources add themselves in app.build()
StatusRegistry = dict[str, Callable[[], SourceStatus]]
