"""How workflowctl shows a run's events to a person: plain lines, or live bars on a terminal."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

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


class LivePrinter:
    """On a terminal: event lines scroll, each running step keeps a live progress bar."""

    def __init__(self, console: Console) -> None:
        self.text = EventText()
        self.progress = Progress(
            TextColumn("[bold]{task.fields[step]}[/] on {task.fields[host]}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[message]}"),
            console=console,
            transient=True,
        )
        self.progress.start()
        self.bars: dict[str, TaskID] = {}

    def handle(self, event: Mapping[str, Any]) -> None:
        kind, step = event["type"], event.get("step_id", "")
        if kind == events.STEP_PROGRESS:
            fraction = float(event["data"].get("fraction", -1))
            bar = self._bar(step, event.get("agent", ""))
            message = _clip(str(event["data"].get("message", "")), 40)
            if fraction >= 0:
                self.progress.update(bar, completed=fraction * 100, message=escape(message))
            else:
                self.progress.update(bar, message=escape(message))
            return
        if kind == events.STEP_STARTED:
            self._bar(step, event.get("agent", ""))
        elif kind in (
            events.STEP_SUCCEEDED,
            events.STEP_FAILED,
            events.STEP_INTERRUPTED,
            events.STEP_RETRYING,
        ):
            bar = self.bars.pop(step, None)
            if bar is not None:
                self.progress.remove_task(bar)
        line = self.text.line(event)
        if line is not None:
            self.progress.console.print(
                f"[dim]{_clock(event['time_ms'])}[/]  {escape(line)}", highlight=False
            )

    def _bar(self, step: str, host: str) -> TaskID:
        if step not in self.bars:
            self.bars[step] = self.progress.add_task(
                "", total=100, step=escape(step), host=escape(host), message=""
            )
        return self.bars[step]

    def close(self) -> None:
        self.progress.stop()
