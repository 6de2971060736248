"""The dead-run automations are registered idempotently (``deployments/common.py``).

A serving process or ``deployments.setup`` that starts again must not replace an
automation that is already as defined: a replaced proactive automation forgets the
runs it was timing, so a restart right after a crash (or a Cancel) would leave those
runs unended. A changed grace period does replace it.
"""

from __future__ import annotations

import anyio
from prefect.client.orchestration import get_client

from deployments.common import CANCEL_AUTOMATION, CRASH_AUTOMATION, register_crash_automation
from tests.prefect_fixtures import PrefectAPI


async def _ids() -> dict[str, list[str]]:
    async with get_client() as client:
        return {
            name: [str(a.id) for a in await client.read_automations_by_name(name)]
            for name in (CRASH_AUTOMATION, CANCEL_AUTOMATION)
        }


def test_registering_again_keeps_the_same_automations_until_the_grace_changes(
    prefect_api: PrefectAPI,
) -> None:
    async def go() -> tuple[dict, dict, dict]:
        await register_crash_automation(45)
        first = await _ids()
        await register_crash_automation(45)
        again = await _ids()
        await register_crash_automation(50)
        return first, again, await _ids()

    first, again, changed = anyio.run(go)
    assert all(len(ids) == 1 for ids in first.values()), first
    assert again == first  # untouched: their pending checks survive a restart
    assert all(len(ids) == 1 for ids in changed.values()), changed
    assert all(changed[name] != first[name] for name in first)  # replaced, once each
