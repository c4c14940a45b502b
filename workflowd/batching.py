"""Several stream messages sent as one.

Each message on a grpc-aio stream costs 100-300 us of Python and C on either
side, more than a short step's own work. When a writer finds several step
starts (coordinator) or step events (agent) waiting at once, it sends them
in one StartSteps or StepEvents message, in the order they were queued, so
that a burst of steps costs one message, not one each. The peer says in its
hello or welcome whether it reads them; to one that does not, each message
goes as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from workflowd.rpc import workflow_pb2 as pb

# Messages joined in one at most; a coordinator refuses a StepEvents with more.
MAX_PER_MESSAGE = 500

# What a joined item adds to the message around it: a field tag and a length.
_ITEM_OVERHEAD_BYTES = 8

M = TypeVar("M", pb.AgentMessage, pb.CoordinatorMessage)


def coordinator_messages(
    messages: Sequence[pb.CoordinatorMessage], batched_starts: bool, budget_bytes: int
) -> list[pb.CoordinatorMessage]:
    """What to write for `messages`: runs of step starts joined, when the agent reads them."""
    if not batched_starts:
        return list(messages)
    return _joined(
        messages,
        "start",
        budget_bytes,
        lambda run: pb.CoordinatorMessage(starts=pb.StartSteps(starts=[m.start for m in run])),
    )


def agent_messages(
    messages: Sequence[pb.AgentMessage], batched_events: bool, budget_bytes: int
) -> list[pb.AgentMessage]:
    """What to write for `messages`: runs of step events joined, if the coordinator reads them."""
    if not batched_events:
        return list(messages)
    return _joined(
        messages,
        "step",
        budget_bytes,
        lambda run: pb.AgentMessage(steps=pb.StepEvents(events=[m.step for m in run])),
    )


def _joined(
    messages: Sequence[M], kind: str, budget_bytes: int, join: Callable[[list[M]], M]
) -> list[M]:
    """`messages` in order, each run of `kind` joined, each joined one within the budget.

    A message larger than the budget on its own goes alone, as it is.
    """
    out: list[M] = []
    run: list[M] = []
    run_bytes = 0

    def close_run() -> None:
        nonlocal run_bytes
        if len(run) == 1:
            out.append(run[0])
        elif run:
            out.append(join(run))
        run.clear()
        run_bytes = 0

    for message in messages:
        if message.WhichOneof("kind") != kind:
            close_run()
            out.append(message)
            continue
        size = message.ByteSize() + _ITEM_OVERHEAD_BYTES
        if run and (run_bytes + size > budget_bytes or len(run) >= MAX_PER_MESSAGE):
            close_run()
        run.append(message)
        run_bytes += size
    close_run()
    return out
