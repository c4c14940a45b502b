"""How workflowctl shows a run's events to a person: plain lines, or live lines per step."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from workflowd import events

_TEXT_LIMIT = 72


def _clip(text: str, limit: int = _TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summarize_outputs(outputs: Mapping[str, Any]) -> str:
    """Outputs in one line: scalars as they are, collections by their size."""
    parts = []
    for key, value in outputs.items():
        if isinstance(value, list):
            shown = f"[{len(value)} items]"
        elif isinstance(value, dict):
            shown = f"{{{len(value)} keys}}"
        elif isinstance(value, str):
            shown = _clip(value, 40)
        elif isinstance(value, float):
            shown = json.dumps(round(value, 3))
        else:
            shown = json.dumps(value)
        parts.append(f"{key}={shown}")
    return " ".join(parts)


def _clock(time_ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(time_ms / 1000))


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.1f}s"


class EventText:
    """Turns events into the text of one line each, remembering step start times."""

    def __init__(self) -> None:
        self.dispatched_ms: dict[str, int] = {}
        self.submitted_ms = 0

    def line(self, event: Mapping[str, Any]) -> str | None:
        kind = event["type"]
        data = event.get("data", {})
        step = event.get("step_id", "")
        agent = event.get("agent", "")
        at = event.get("time_ms", 0)
        if kind == events.RUN_SUBMITTED:
            self.submitted_ms = at
            return f"run {data.get('name', '')} submitted"
        if kind == events.RUN_STARTED:
            return "run started"
        if kind == events.RUN_SUCCEEDED:
            return f"run succeeded in {_seconds(at - self.submitted_ms)}"
        if kind == events.RUN_FAILED:
            first = str(data.get("message", "")).splitlines()[:1]
            return f"run failed at step {data.get('step_id', '?')}: {''.join(first)}"
        if kind == events.STEP_WAITING:
            return f"{step}: waiting: {data.get('reason', '')}"
        if kind == events.STEP_DISPATCHED:
            self.dispatched_ms[step] = at
            return f"{step}: dispatched to {agent} (attempt {event.get('attempt', 0)})"
        if kind == events.STEP_STARTED:
            return f"{step}: started on {agent}"
        if kind == events.STEP_PROGRESS:
            fraction = float(data.get("fraction", -1))
            amount = f"{fraction * 100:3.0f}%" if fraction >= 0 else "   …"
            return f"{step}: {amount} {_clip(str(data.get('message', '')))}"
        if kind == events.STEP_LOG:
            return f"{step}: {data.get('level', 'info')}: {data.get('message', '')}"
        if kind == events.STEP_SUCCEEDED:
            took = _seconds(at - self.dispatched_ms.get(step, at))
            failed = ", ".join(data.get("failed", []))
            how = {
                "check": f" on {agent} in {took} (already done, run skipped)",
                "signal": f" on signal {data.get('signal', '')}",
                "fanout": f" on every instance but {failed}" if failed else " on every instance",
            }.get(str(data.get("path")), f" on {agent} in {took}")
            outputs = summarize_outputs(data.get("outputs", {}))
            return f"{step}: succeeded{how}" + (f": {outputs}" if outputs else "")
        if kind == events.STEP_FAILED:
            message = str(data.get("message", "")).replace("\n", "\n    ")
            undone = " (rolled back)" if data.get("rolled_back") else ""
            return f"{step}: failed on {agent or 'coordinator'}{undone}: {message}"
        if kind == events.STEP_INTERRUPTED:
            return f"{step}: interrupted: {data.get('reason', '')}; it will run again"
        if kind == events.STEP_RETRYING:
            return (
                f"{step}: retrying in {float(data.get('delay_s', 0)):.1f}s "
                f"(try {data.get('next_try', '?')} of {data.get('attempts', '?')})"
            )
        if kind == events.RUN_CANCEL_REQUESTED:
            return f"run cancel requested: {data.get('reason', '')}"
        if kind == events.RUN_CANCELLED:
            return "run cancelled"
        if kind == events.RUN_SIGNALLED:
            return f"signal {data.get('name', '')} received"
        if kind == events.RUN_CONFIG_UPDATED:
            return f"config {data.get('key', '')} = {_clip(json.dumps(data.get('value')), 40)}"
        if kind == events.STEP_FANNED_OUT:
            return f"{step}: fanned out to {', '.join(data.get('agents', []))}"
        if kind == events.STEP_SKIPPED:
            return f"{step}: skipped, its condition is false"
        if kind == events.STEP_MESSAGE:
            return f"{step}: sent a message to {data.get('topic', '')}"
        if kind == events.STEP_OUTPUT:
            return f"{step}: set output {data.get('name', '')}"
        if kind == events.RUN_RESUMED:
            return "run resumed; running again: " + ", ".join(data.get("rerun", []))
        return f"{step}: {kind}" if step else kind


class PlainPrinter:
    """One line per event; progress only at each quarter, to keep logs short."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.text = EventText()
        self._quarter: dict[tuple[str, int], int] = {}

    def handle(self, event: Mapping[str, Any]) -> None:
        if event["type"] == events.STEP_PROGRESS:
            fraction = float(event["data"].get("fraction", -1))
            key = (event["step_id"], event.get("attempt", 0))
            quarter = int(fraction * 4) if fraction >= 0 else -1
            if quarter <= self._quarter.get(key, -1):
                return
            self._quarter[key] = quarter
        line = self.text.line(event)
        if line is not None:
            self.console.print(
                f"{_clock(event['time_ms'])}  {line}", markup=False, highlight=False
            )

    def close(self) -> None:
        pass


@dataclass
class Attempt:
    """One attempt of a step, from its history: where, when, and how it ended."""

    step_id: str
    attempt: int
    host: str
    dispatched_ms: int
    started_ms: int = 0
    finished_ms: int = 0
    outcome: str = "dispatched"  # then running, succeeded, failed or interrupted
    error: str = ""  # the kind of failure: task_error, timeout, agent_lost, ...
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "host": self.host,
            "dispatched_ms": self.dispatched_ms,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "outcome": self.outcome,
            "error": self.error,
            "message": self.message,
        }


def attempts(history: Iterable[Mapping[str, Any]]) -> dict[str, list[Attempt]]:
    """Every attempt of every step in a run's history, by step, oldest first."""
    found: dict[tuple[str, int], Attempt] = {}
    by_step: dict[str, list[Attempt]] = {}
    for event in history:
        kind, step_id = event["type"], event.get("step_id", "")
        key = (step_id, int(event.get("attempt", 0)))
        data = event.get("data") or {}
        if kind == events.STEP_DISPATCHED:
            record = Attempt(step_id, key[1], event.get("agent", ""), event.get("time_ms", 0))
            found[key] = record
            by_step.setdefault(step_id, []).append(record)
            continue
        record = found.get(key)
        if record is None:
            continue
        if kind == events.STEP_STARTED:
            record.outcome, record.started_ms = "running", event.get("time_ms", 0)
        elif kind in (events.STEP_SUCCEEDED, events.STEP_FAILED, events.STEP_INTERRUPTED):
            record.finished_ms = event.get("time_ms", 0)
            record.outcome = {
                events.STEP_SUCCEEDED: "succeeded",
                events.STEP_FAILED: "failed",
                events.STEP_INTERRUPTED: "interrupted",
            }[kind]
            record.error = str(data.get("error", ""))
            record.message = str(data.get("message", "") or data.get("reason", ""))
    return by_step


@dataclass
class StepLine:
    """What the live view shows of one step: its latest attempt."""

    step_id: str
    state: str = "pending"
    host: str = ""
    attempt: int = 0
    fraction: float | None = None  # None: the plugin has not said, or cannot say
    message: str = ""
    dispatched_ms: int = 0
    finished_ms: int = 0


# step states as the live view names them, and how it marks them
_STATE_STYLE = {
    "pending": ("·", "dim"),
    "waiting": ("…", "yellow"),
    "dispatched": ("→", "cyan"),
    "running": ("▶", "cyan"),
    "succeeded": ("✓", "green"),
    "failed": ("✗", "red"),
    "retrying": ("↻", "yellow"),
    "interrupted": ("↻", "yellow"),
    "cancelled": ("✗", "red"),
}


class RunBoard:
    """A run's steps folded from its events: one line each, in the order they first appear.

    A rich renderable: a `Live` display redraws it, and elapsed times of
    running steps advance with each redraw. Finished steps keep their line
    with their final state.
    """

    def __init__(self, clock_ms: Any = None) -> None:
        self.steps: dict[str, StepLine] = {}
        self.name = ""
        self.run_id = ""
        self.status = "pending"
        self.submitted_ms = 0
        self.finished_ms = 0
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)

    def _line(self, step_id: str) -> StepLine:
        line = self.steps.get(step_id)
        if line is None:
            line = self.steps[step_id] = StepLine(step_id)
        return line

    def update(self, event: Mapping[str, Any]) -> None:
        kind = event["type"]
        data = event.get("data") or {}
        at = int(event.get("time_ms", 0))
        self.run_id = event.get("run_id", "") or self.run_id
        step_id = event.get("step_id", "")
        if not step_id:
            self._update_run(kind, data, at)
            return
        line = self._line(step_id)
        if kind == events.STEP_WAITING:
            line.state, line.message = "waiting", str(data.get("reason", ""))
        elif kind == events.STEP_DISPATCHED:
            line.state, line.host = "dispatched", event.get("agent", "")
            line.attempt, line.dispatched_ms, line.finished_ms = event.get("attempt", 0), at, 0
            line.fraction, line.message = 0.0, ""
        elif kind == events.STEP_STARTED:
            line.state, line.host = "running", event.get("agent", "") or line.host
        elif kind == events.STEP_PROGRESS:
            fraction = float(data.get("fraction", -1))
            line.fraction = fraction if fraction >= 0 else None
            line.message = str(data.get("message", ""))
        elif kind == events.STEP_SUCCEEDED:
            line.state, line.fraction, line.finished_ms = "succeeded", 1.0, at
            already = " (already done)" if data.get("path") == "check" else ""
            line.message = summarize_outputs(data.get("outputs", {})) + already
        elif kind == events.STEP_FAILED:
            line.state, line.finished_ms = "failed", at
            line.message = "".join(str(data.get("message", "")).splitlines()[:1])
        elif kind == events.STEP_RETRYING:
            line.state = "retrying"
            line.message = f"retrying in {float(data.get('delay_s', 0)):.1f}s"
        elif kind == events.STEP_INTERRUPTED:
            line.state, line.finished_ms = "interrupted", at
            line.message = f"interrupted: {data.get('reason', '')}; it will run again"

    def _update_run(self, kind: str, data: Mapping[str, Any], at: int) -> None:
        if kind == events.RUN_SUBMITTED:
            self.name, self.submitted_ms = str(data.get("name", "")), at
        elif kind in (events.RUN_STARTED, events.RUN_RESUMED):
            self.status, self.finished_ms = events.RUNNING, 0
            for step_id in data.get("rerun", []):
                self.steps.pop(step_id, None)
        elif kind == events.RUN_SUCCEEDED:
            self.status, self.finished_ms = events.SUCCEEDED, at
        elif kind == events.RUN_FAILED:
            self.status, self.finished_ms = events.FAILED, at
        elif kind == events.RUN_CANCELLED:
            self.status, self.finished_ms = events.CANCELLED, at
            for line in self.steps.values():
                if line.state in ("dispatched", "running"):
                    line.state = "cancelled"

    def _elapsed(self, line: StepLine, now_ms: int) -> str:
        if not line.dispatched_ms:
            return ""
        end = line.finished_ms or now_ms
        return _duration(max(end - line.dispatched_ms, 0))

    def __rich__(self) -> Group:
        now_ms = self._clock_ms()
        mark, style = _STATE_STYLE.get(self.status, ("", ""))
        took = _duration(max((self.finished_ms or now_ms) - self.submitted_ms, 0))
        header = Text.assemble(
            ("run ", "dim"),
            (self.name or "?", "bold"),
            (f" {self.run_id}  ", "dim"),
            (f"{mark} {self.status}".strip(), style),
            (f"  {took}" if self.submitted_ms else "", "dim"),
        )
        table = Table.grid(padding=(0, 1))
        table.add_column(no_wrap=True)  # state
        table.add_column(no_wrap=True, style="bold")  # step
        table.add_column(no_wrap=True)  # bar
        table.add_column(no_wrap=True, justify="right")  # percent
        table.add_column(no_wrap=True)  # host
        table.add_column(no_wrap=True, justify="right", style="dim")  # elapsed
        table.add_column(no_wrap=True, overflow="ellipsis", max_width=60)  # message
        for line in self.steps.values():
            mark, style = _STATE_STYLE.get(line.state, ("?", ""))
            active = line.state in ("dispatched", "running")
            known = line.fraction is not None
            bar: ProgressBar | str = ""
            if line.dispatched_ms:
                bar = ProgressBar(
                    total=1.0,
                    completed=line.fraction if known else 0.0,
                    width=24,
                    pulse=active and not known,
                    complete_style="red" if line.state == "failed" else "cyan",
                    finished_style="green",
                )
            table.add_row(
                Text(f"{mark} {line.state}", style=style),
                Text(line.step_id),
                bar,
                f"{line.fraction * 100:3.0f}%" if known else "",
                Text(f"on {line.host}" if line.host else ""),
                self._elapsed(line, now_ms),
                Text(_clip(line.message, 60)),
            )
        return Group(header, table)


def _duration(ms: int) -> str:
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# events the live view prints above its step lines: what the step lines cannot show
_NOTEWORTHY = frozenset(
    {
        events.RUN_SUBMITTED,
        events.RUN_SUCCEEDED,
        events.RUN_FAILED,
        events.RUN_CANCEL_REQUESTED,
        events.RUN_CANCELLED,
        events.RUN_RESUMED,
        events.STEP_WAITING,
        events.STEP_LOG,
        events.STEP_FAILED,
        events.STEP_RETRYING,
        events.STEP_INTERRUPTED,
    }
)


class LivePrinter:
    """On a terminal: one live line per step (state, bar, host, time, message) under the news.

    Logs, failures, waits and the run's outcome scroll above the step lines;
    when the run ends the step lines stay on the screen with their final state.
    """

    def __init__(self, console: Console, refresh_per_second: float = 4) -> None:
        self.text = EventText()
        self.board = RunBoard()
        self._last_wait: dict[str, str] = {}
        self.live = Live(
            self.board,
            console=console,
            refresh_per_second=refresh_per_second,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.live.start()

    def handle(self, event: Mapping[str, Any]) -> None:
        self.board.update(event)
        kind = event["type"]
        if kind not in _NOTEWORTHY:
            return
        if kind == events.STEP_WAITING:
            # the engine records a wait again when its reason changes, or not at all
            reason = str(event.get("data", {}).get("reason", ""))
            if self._last_wait.get(event.get("step_id", "")) == reason:
                return
            self._last_wait[event.get("step_id", "")] = reason
        line = self.text.line(event)
        if line is not None:
            self.live.console.print(
                f"[dim]{_clock(event['time_ms'])}[/]  {escape(line)}", highlight=False
            )

    def close(self) -> None:
        self.live.refresh()
        self.live.stop()
