"""A build's time limit (``timeout_minutes``).

A build that hangs (a test that never returns, a registry that stops answering
mid-push, an engine that stalls) would otherwise hold its worker and its engine
slot until someone notices. The clock starts once the run holds its engine slot,
so builds queued behind others are not timed out for waiting. When it runs out,
the stage in progress is cancelled (an engine call in flight is abandoned, and
the run's Dagger session closed as after any failure), and the run fails naming
the parameter and the stage; the requested output path is replaced only once the
image is assembled, as after any failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class BuildTimedOut(TimeoutError):
    """The build ran past ``timeout_minutes`` and was stopped. Not retried:
    a build that long again would most likely meet the same end."""


@contextlib.asynccontextmanager
async def deadline(minutes: float) -> AsyncIterator[None]:
    """Cancel what runs inside once ``minutes`` have passed, and say so as
    :class:`BuildTimedOut`; a TimeoutError of anything inside stays its own."""
    timer = asyncio.timeout(minutes * 60)
    try:
        async with timer:
            yield
    except TimeoutError:
        if timer.expired():
            raise BuildTimedOut(
                f"the build ran past timeout_minutes ({minutes:g} min) and was stopped; "
                "raise timeout_minutes for a build that needs longer"
            ) from None
        raise
