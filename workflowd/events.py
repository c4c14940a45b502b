"""A run's history: the event record and the names of event types and statuses.

Light on purpose: workflowctl and the agent import it without the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

COORDINATOR = "coordinator"

# run statuses
PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
RUN_FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})

# step statuses (besides pending, running, succeeded, failed)
WAITING, DISPATCHED = "waiting", "dispatched"
STEP_ACTIVE = frozenset({DISPATCHED, RUNNING})
STEP_FINISHED = frozenset({SUCCEEDED, FAILED})

# event types
RUN_SUBMITTED = "run_submitted"
RUN_STARTED = "run_started"
RUN_SUCCEEDED = "run_succeeded"
RUN_FAILED = "run_failed"
STEP_WAITING = "step_waiting"
STEP_DISPATCHED = "step_dispatched"
STEP_STARTED = "step_started"
STEP_PROGRESS = "step_progress"
STEP_LOG = "step_log"
STEP_SUCCEEDED = "step_succeeded"
STEP_FAILED = "step_failed"
STEP_INTERRUPTED = "step_interrupted"  # the attempt is gone; the step runs again
STEP_RETRYING = "step_retrying"  # a failed step waits out its backoff, then runs again
RUN_CANCEL_REQUESTED = "run_cancel_requested"
RUN_CANCELLED = "run_cancelled"
RUN_RESUMED = "run_resumed"
RUN_CONFIG_UPDATED = "run_config_updated"
RUN_SIGNALLED = "run_signalled"
STEP_SKIPPED = "step_skipped"  # its `when` was false
STEP_FANNED_OUT = "step_fanned_out"  # one instance per matching agent
STEP_MESSAGE = "step_message"  # a running step sent a message to a topic of its run
STEP_OUTPUT = "step_output"  # a running step set one output before finishing
SKIPPED = "skipped"
RUN_TERMINAL_EVENTS = frozenset({RUN_SUCCEEDED, RUN_FAILED, RUN_CANCELLED})


@dataclass(frozen=True)
class Event:
    """One entry of a run's history. `seq` and `time_ms` are set by the store."""

    type: str
    step_id: str = ""
    attempt: int = 0
    agent: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    seq: int = 0
    time_ms: int = 0
