"""How workflowctl shows a run's events to a person, one line each."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console

from workflowd.render import (
    EventText,
    LivePrinter,
    PlainPrinter,
    RunBoard,
    attempts,
    summarize_outputs,
)


def event(kind: str, step: str = "", at: int = 0, **fields) -> dict:
    return {"type": kind, "step_id": step, "time_ms": at, "data": {}, **fields}


# ------------------------------------------------------------------ summarize_outputs


def test_summarize_outputs_scalars_and_collections():
    """Scalars are shown as JSON, lists by item count, dicts by key count."""
    outputs = {
        "equal": True,
        "files": 3,
        "ratio": 0.5,
        "nothing": None,
        "root": "/srv/data",
        "manifest": [{"path": "a"}, {"path": "b"}],
        "meta": {"a": 1, "b": 2, "c": 3},
    }

    assert summarize_outputs(outputs) == (
        "equal=true files=3 ratio=0.5 nothing=null root=/srv/data manifest=[2 items] meta={3 keys}"
    )


def test_summarize_outputs_clips_long_strings():
    """Strings over 40 characters are cut to 40 with an ellipsis."""
    assert summarize_outputs({"digest": "0123456789" * 6}) == (
        "digest=" + "0123456789" * 3 + "012345678…"
    )


def test_summarize_outputs_rounds_floats():
    """Floats are shown to three decimals at most."""
    assert summarize_outputs({"slept_s": 2.000115155, "ratio": 0.5}) == "slept_s=2.0 ratio=0.5"


def test_summarize_no_outputs():
    """No outputs give an empty summary."""
    assert summarize_outputs({}) == ""


# ------------------------------------------------------------------ EventText


def test_run_lines():
    """Run events read as submitted, started, succeeded with the time since submission."""
    text = EventText()

    assert text.line(event("run_submitted", at=10_000, data={"name": "provenance"})) == (
        "run provenance submitted"
    )
    assert text.line(event("run_started", at=10_100)) == "run started"
    assert text.line(event("run_succeeded", at=22_350)) == "run succeeded in 12.3s"


def test_run_failed_shows_the_first_line():
    """A run failure names the step and the first line of its message only."""
    line = EventText().line(
        event("run_failed", data={"step_id": "compare", "message": "manifests differ\n  x"})
    )

    assert line == "run failed at step compare: manifests differ"


def test_step_lifecycle_lines():
    """Dispatch, start and success name the step, the agent, the attempt and the time taken."""
    text = EventText()

    assert text.line(event("step_dispatched", "hash", 5_000, agent="host-a", attempt=2)) == (
        "hash: dispatched to host-a (attempt 2)"
    )
    assert text.line(event("step_started", "hash", 5_100, agent="host-a")) == (
        "hash: started on host-a"
    )
    done = event("step_succeeded", "hash", 7_500, agent="host-a")
    done["data"] = {"outputs": {"files": 2, "manifest": [1, 2]}, "path": "run"}
    assert text.line(done) == "hash: succeeded on host-a in 2.5s: files=2 manifest=[2 items]"


def test_step_succeeded_by_check():
    """A step whose check found the work done says the run was skipped."""
    text = EventText()
    text.line(event("step_dispatched", "hash", 1_000, agent="host-a", attempt=1))
    done = event("step_succeeded", "hash", 1_200, agent="host-a")
    done["data"] = {"outputs": {}, "path": "check"}

    assert text.line(done) == "hash: succeeded on host-a in 0.2s (already done, run skipped)"


def test_step_failed_keeps_the_report_indented():
    """A multi-line failure keeps its lines, each continued line indented under the step."""
    failed = event("step_failed", "compare", agent="")
    failed["data"] = {"message": "manifests differ: 3 files\ndiffering (1):\n  a.txt"}

    assert EventText().line(failed).splitlines() == [
        "compare: failed on coordinator: manifests differ: 3 files",
        "    differing (1):",
        "      a.txt",
    ]


def test_step_failed_names_the_agent():
    """A failure on an agent names that agent."""
    failed = event("step_failed", "hash", agent="host-b", data={"message": "no such dir"})

    assert EventText().line(failed) == "hash: failed on host-b: no such dir"


def test_waiting_log_and_interrupted_lines():
    """Waiting, log and interrupted events show their reason, level and message."""
    text = EventText()

    waiting = event("step_waiting", "hash", data={"reason": "agent host-a is not connected"})
    assert text.line(waiting) == "hash: waiting: agent host-a is not connected"
    log = event("step_log", "hash", data={"level": "warning", "message": "slow disk"})
    assert text.line(log) == "hash: warning: slow disk"
    gone = event("step_interrupted", "hash", data={"reason": "agent host-a disconnected"})
    assert text.line(gone) == "hash: interrupted: agent host-a disconnected; it will run again"


@pytest.mark.parametrize(
    ("fraction", "shown"),
    [(0.0, "  0%"), (0.5, " 50%"), (1.0, "100%"), (-1.0, "   …")],
)
def test_progress_lines(fraction, shown):
    """Progress shows a percentage, or an ellipsis when the amount is unknown."""
    line = EventText().line(
        event("step_progress", "hash", data={"fraction": fraction, "message": "a.txt"})
    )

    assert line == f"hash: {shown} a.txt"


def test_progress_message_is_clipped():
    """A long progress message is cut to 72 characters with an ellipsis."""
    line = EventText().line(
        event("step_progress", "hash", data={"fraction": 0.5, "message": "x" * 100})
    )

    assert line == "hash:  50% " + "x" * 71 + "…"


def test_unknown_event_types_show_their_name():
    """An event type this version does not know is shown by name, with its step if any."""
    text = EventText()

    assert text.line(event("step_paused", "hash")) == "hash: step_paused"
    assert text.line(event("run_paused")) == "run_paused"


# ------------------------------------------------------------------ PlainPrinter


def printed(events: list[dict]) -> list[str]:
    """What PlainPrinter writes for events, without the leading clock."""
    out = io.StringIO()
    printer = PlainPrinter(Console(file=out, width=200, color_system=None))
    for item in events:
        printer.handle(item)
    printer.close()
    return [line.split("  ", 1)[1] for line in out.getvalue().splitlines()]


def progress(fraction: float, attempt: int = 1) -> dict:
    return event(
        "step_progress",
        "hash",
        attempt=attempt,
        data={"fraction": fraction, "message": f"at {fraction}"},
    )


def test_plain_printer_prints_progress_at_each_new_quarter():
    """Progress is printed only when it reaches a quarter not yet shown."""
    fractions = [0.0, 0.1, 0.2, 0.26, 0.3, 0.24, 0.5, 0.74, 0.99, 1.0, 1.0]

    lines = printed([progress(f) for f in fractions])

    assert lines == [
        "hash:   0% at 0.0",
        "hash:  26% at 0.26",
        "hash:  50% at 0.5",
        "hash:  99% at 0.99",
        "hash: 100% at 1.0",
    ]


def test_plain_printer_starts_over_for_a_new_attempt():
    """A new attempt of the step shows its progress from the start again."""
    lines = printed([progress(0.6, attempt=1), progress(0.1, attempt=2), progress(0.3, 2)])

    assert lines == ["hash:  60% at 0.6", "hash:  10% at 0.1", "hash:  30% at 0.3"]


def test_plain_printer_prints_other_events_with_a_clock():
    """Every other event is printed, each line starting with the local time of the event."""
    at = 1_700_000_000_000
    out = io.StringIO()
    printer = PlainPrinter(Console(file=out, width=200, color_system=None))

    printer.handle(event("run_started", at=at))
    printer.handle(event("step_waiting", "a", at=at, data={"reason": "[bold]x[/bold]"}))

    clock = time.strftime("%H:%M:%S", time.localtime(at / 1000))
    assert out.getvalue().splitlines() == [
        f"{clock}  run started",
        f"{clock}  a: waiting: [bold]x[/bold]",
    ]


# ------------------------------------------------------------------ RunBoard and LivePrinter


def step_event(kind: str, step: str, at: int, agent: str = "", attempt: int = 1, **data) -> dict:
    return {
        "type": kind,
        "step_id": step,
        "time_ms": at,
        "agent": agent,
        "attempt": attempt,
        "data": data,
    }


RUN = [
    {"type": "run_submitted", "run_id": "r1", "time_ms": 10_000, "data": {"name": "provenance"}},
    {"type": "run_started", "run_id": "r1", "time_ms": 10_000, "data": {}},
    step_event("step_dispatched", "manifest-a", 10_100, "host-a"),
    step_event("step_started", "manifest-a", 10_200, "host-a"),
    step_event("step_progress", "manifest-a", 11_000, "host-a", fraction=0.42, message="os.py"),
    step_event("step_dispatched", "manifest-b", 10_100, "host-b"),
    step_event("step_started", "manifest-b", 10_200, "host-b"),
    step_event("step_succeeded", "manifest-b", 12_100, "host-b", outputs={"files": 3}),
    step_event("step_waiting", "compare", 10_100, reason="agent host-c is not connected"),
]


def board_text(board: RunBoard, width: int = 120) -> list[str]:
    """The board as a terminal shows it, without colours, one string per line."""
    console = Console(file=io.StringIO(), force_terminal=True, width=width, record=True)
    console.print(board)
    return [line.rstrip() for line in console.export_text().splitlines()]


def cells(line: str) -> list[str]:
    """A step line's words, with its progress bar as "<bar>"."""
    return ["<bar>" if set(word) <= set("━╺╸") else word for word in line.split()]


def test_board_has_one_line_per_step_in_order_of_appearance():
    """Each step has one line with its state, bar, percentage, host, time and message."""
    board = RunBoard(clock_ms=lambda: 20_000)
    for item in RUN:
        board.update(item)

    header, first, second, third = board_text(board)

    assert header == "run provenance r1  ▶ running  10.0s"
    assert cells(first) == [
        *("▶", "running", "manifest-a", "<bar>", "42%", "on", "host-a", "9.9s", "os.py")
    ]
    assert cells(second) == [
        *("✓", "succeeded", "manifest-b", "<bar>", "100%", "on", "host-b", "2.0s", "files=3")
    ]
    # a step that never started has no bar
    assert " ".join(cells(third)) == "… waiting compare agent host-c is not connected"


def test_board_keeps_finished_steps_with_their_final_state():
    """When the run ends every step keeps its line, and the header shows the outcome."""
    board = RunBoard(clock_ms=lambda: 99_000)
    for item in RUN:
        board.update(item)
    board.update(step_event("step_failed", "manifest-a", 13_100, "host-a", message="gone\nmore"))
    board.update({"type": "run_failed", "time_ms": 13_200, "data": {"message": "gone"}})

    header, first, second, third = board_text(board)

    assert header == "run provenance r1  ✗ failed  3.2s"
    assert cells(first) == [
        *("✗", "failed", "manifest-a", "<bar>", "42%", "on", "host-a", "3.0s", "gone")
    ]
    assert cells(second)[:3] == ["✓", "succeeded", "manifest-b"]
    assert cells(third)[:3] == ["…", "waiting", "compare"]


def test_board_shows_unknown_progress_without_a_percentage():
    """A plugin that cannot say how far it is gets no percentage, only its message."""
    board = RunBoard(clock_ms=lambda: 11_000)
    board.update(step_event("step_dispatched", "scan", 10_000, "host-a"))
    board.update(step_event("step_started", "scan", 10_000, "host-a"))
    board.update(step_event("step_progress", "scan", 10_500, "host-a", fraction=-1, message="x"))

    (_, line) = board_text(board)

    assert cells(line) == ["▶", "running", "scan", "<bar>", "on", "host-a", "1.0s", "x"]


def test_board_starts_a_retried_step_over():
    """A new attempt replaces the failed one on the step's line, on its new host."""
    board = RunBoard(clock_ms=lambda: 30_000)
    board.update(step_event("step_dispatched", "hash", 10_000, "host-a"))
    board.update(step_event("step_failed", "hash", 11_000, "host-a", message="disk"))
    board.update(step_event("step_retrying", "hash", 11_000, delay_s=2.0))
    board.update(step_event("step_dispatched", "hash", 13_000, "host-b", attempt=2))

    (_, line) = board_text(board)

    assert cells(line) == ["→", "dispatched", "hash", "<bar>", "0%", "on", "host-b", "17.0s"]


def test_live_printer_prints_news_above_the_step_lines():
    """Failures, waits and the outcome scroll above; the step lines stay at the end."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    printer = LivePrinter(console, refresh_per_second=20)
    for item in RUN:
        printer.handle(item)
    printer.handle(step_event("step_succeeded", "manifest-a", 13_000, "host-a"))
    printer.handle({"type": "run_succeeded", "time_ms": 14_000, "data": {}})
    printer.close()

    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    news = [line for line in text.splitlines() if re.match(r"\d\d:\d\d:\d\d  ", line)]
    assert [line[10:] for line in news] == [
        "run provenance submitted",
        "compare: waiting: agent host-c is not connected",
        "run succeeded in 4.0s",
    ]
    final = [cells(line)[:3] for line in text.rstrip().splitlines()[-3:]]
    assert final == [
        ["✓", "succeeded", "manifest-a"],
        ["✓", "succeeded", "manifest-b"],
        ["…", "waiting", "compare"],
    ]


# ------------------------------------------------------------------ attempts


def test_attempts_of_each_step():
    """Every attempt of a step is listed with its host, times, outcome and error."""
    history = [
        step_event("step_dispatched", "hash", 1_000, "host-a", attempt=1),
        step_event("step_started", "hash", 1_100, "host-a", attempt=1),
        step_event("step_failed", "hash", 2_000, "host-a", 1, error="timeout", message="late"),
        step_event("step_dispatched", "hash", 4_000, "host-b", attempt=2),
        step_event("step_progress", "hash", 4_500, "host-b", attempt=2, fraction=0.5),
        step_event("step_succeeded", "hash", 5_000, "host-b", attempt=2),
        step_event("step_dispatched", "other", 6_000, "host-a", attempt=1),
        step_event("step_interrupted", "other", 6_500, "host-a", 1, reason="agent stopping"),
    ]

    found = attempts(history)

    assert [a.as_dict() for a in found["hash"]] == [
        {
            "attempt": 1,
            "host": "host-a",
            "dispatched_ms": 1_000,
            "started_ms": 1_100,
            "finished_ms": 2_000,
            "outcome": "failed",
            "error": "timeout",
            "message": "late",
        },
        {
            "attempt": 2,
            "host": "host-b",
            "dispatched_ms": 4_000,
            "started_ms": 0,
            "finished_ms": 5_000,
            "outcome": "succeeded",
            "error": "",
            "message": "",
        },
    ]
    assert found["other"][0].outcome == "interrupted"
    assert found["other"][0].message == "agent stopping"
