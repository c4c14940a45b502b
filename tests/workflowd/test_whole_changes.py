"""A change to runs is carried through when the control call that asked for it is cancelled."""

from __future__ import annotations

import asyncio
from pathlib import Path

from workflowd import engine
from workflowd.coordinator import Coordinator
from workflowd.server import whole
from workflowd.store import open_store

FLOW = """
name: held
steps:
  - id: gate
    wait: {signal: go}
"""


def test_a_cancelled_caller_does_not_stop_a_change_half_way(tmp_path: Path) -> None:
    """The signal is stored and applied although its caller gave up at once; memory and
    store agree afterwards."""

    async def scenario() -> tuple[list[str], list[str], str]:
        store = open_store(f"sqlite://{tmp_path / 'store.db'}")
        await store.open()
        coordinator = Coordinator(store, {}, scratch_root=tmp_path)
        await coordinator.start()
        try:
            run_id, _ = await coordinator.submit(FLOW, "flow.yaml", {})
            caller = asyncio.ensure_future(whole(coordinator.signal(run_id, "go", None)))
            await asyncio.sleep(0)  # the change has begun: its store write is under way
            caller.cancel()
            await asyncio.sleep(0.5)
            assert caller.cancelled()
            stored = [e.type for e in await store.events(run_id)]
            state = await coordinator.run_state(run_id)
            replayed = engine.replay(
                engine.initial(run_id, state.workflow, {}, {}), await store.events(run_id)
            )
            return stored, [replayed.status, state.status], (await store.get_run(run_id)).status
        finally:
            await coordinator.stop()
            await store.close()

    stored, (replayed, in_memory), status = asyncio.run(scenario())
    assert engine.RUN_SIGNALLED in stored
    assert replayed == in_memory == status == engine.SUCCEEDED
