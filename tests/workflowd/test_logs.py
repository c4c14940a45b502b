"""Log output: JSON lines off a terminal, readable lines on one, run context, no secrets."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import pytest
import structlog

from workflowd import logs

TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.sig"  # noqa: S105 - a made-up token to hide


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    """Each test configures logging afresh; nothing it binds outlives it."""
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def plain(stream: io.StringIO) -> str:
    """Terminal output without its colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue())


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_when_not_on_a_terminal():
    """Off a terminal (the journal, a pipe) each event is one JSON object with level and time."""
    out = io.StringIO()
    logs.configure("info", stream=out)

    structlog.get_logger().info("agent_connected", agent="host-a", running=2)

    (line,) = json_lines(out)
    assert line["event"] == "agent_connected"
    assert line["agent"] == "host-a"
    assert line["running"] == 2
    assert line["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"])


def test_readable_lines_on_a_terminal():
    """On a terminal an event is one readable line: time, level, event, key=value fields."""
    out = Terminal()
    logs.configure("info", stream=out)

    structlog.get_logger().info("agent_connected", agent="host-a")

    text = plain(out)
    assert text.count("\n") == 1
    assert not text.startswith("{")
    assert "[info     ] agent_connected" in text
    assert "agent=host-a" in text


def test_level_filters_events():
    """Events below the configured level are not written."""
    out = io.StringIO()
    logs.configure("warning", stream=out)

    structlog.get_logger().info("quiet")
    structlog.get_logger().warning("loud")

    assert [line["event"] for line in json_lines(out)] == ["loud"]


def test_run_lines_carry_step_and_agent():
    """A line about a run carries step_id and agent too, null when it is about the whole run."""
    out = io.StringIO()
    logs.configure("info", stream=out)

    structlog.get_logger().info("run_started", run_id="r1")
    structlog.get_logger().info("agent_connected", agent="host-a")

    run_line, agent_line = json_lines(out)
    assert (run_line["run_id"], run_line["step_id"], run_line["agent"]) == ("r1", None, None)
    assert "run_id" not in agent_line
    assert "step_id" not in agent_line


def test_unset_run_context_is_left_out_on_a_terminal():
    """On a terminal a run-wide line is not cluttered with step_id=None agent=None."""
    out = Terminal()
    logs.configure("info", stream=out)

    structlog.get_logger().info("run_started", run_id="r1")

    text = plain(out)
    assert "run_id=r1" in text
    assert "None" not in text


def test_bound_context_reaches_every_line():
    """Context bound where a step runs is on every line logged there, by any logger."""
    out = io.StringIO()
    logs.configure("info", stream=out)

    with structlog.contextvars.bound_contextvars(run_id="r1", step_id="hash", agent="host-a"):
        structlog.get_logger("some.plugin").info("plugin_said")
    structlog.get_logger().info("after")

    inside, after = json_lines(out)
    assert (inside["run_id"], inside["step_id"], inside["agent"]) == ("r1", "hash", "host-a")
    assert "run_id" not in after


def test_explicit_fields_win_over_bound_context():
    """A field given to the call is not overwritten by the context bound around it."""
    out = io.StringIO()
    logs.configure("info", stream=out)

    with structlog.contextvars.bound_contextvars(run_id="r1", step_id="hash", agent="host-a"):
        structlog.get_logger().info("run_succeeded", run_id="r1", step_id=None, agent=None)

    (line,) = json_lines(out)
    assert (line["step_id"], line["agent"]) == (None, None)


@pytest.mark.parametrize(
    "field",
    ["token", "api_token", "password", "db_password", "secret", "client_secret", "key", "api_key"],
)
def test_secret_fields_are_redacted(field):
    """Fields named like secrets are written as <redacted>, never their value."""
    out = io.StringIO()
    logs.configure("info", stream=out)

    structlog.get_logger().info("connecting", **{field: TOKEN})

    assert TOKEN not in out.getvalue()
    assert json_lines(out)[0][field] == logs.REDACTED


def test_nested_secrets_and_bearer_credentials_are_redacted():
    """Secrets inside mappings and lists, and bearer credentials inside text, are redacted."""
    out = io.StringIO()
    logs.configure("info", stream=out)

    structlog.get_logger().info(
        "request",
        headers={"authorization": f"Bearer {TOKEN}", "accept": "json"},
        calls=[{"password": TOKEN}],
        detail=f"sent Authorization: Bearer {TOKEN} to host-a",
    )

    assert TOKEN not in out.getvalue()
    (line,) = json_lines(out)
    assert line["headers"] == {"authorization": logs.REDACTED, "accept": "json"}
    assert line["calls"] == [{"password": logs.REDACTED}]
    assert line["detail"] == f"sent Authorization: Bearer {logs.REDACTED} to host-a"


def test_secrets_are_redacted_on_a_terminal_too():
    """The readable renderer gets redacted values as well."""
    out = Terminal()
    logs.configure("info", stream=out)

    structlog.get_logger().info("connecting", token=TOKEN)

    assert TOKEN not in out.getvalue()
    assert logs.REDACTED in out.getvalue()


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("token", True),
        ("refresh_token", True),
        ("Password", True),
        ("tls_key", True),
        ("keys", False),
        ("monkey", False),
        ("key_file", False),
        ("run_id", False),
        ("agent", False),
    ],
)
def test_is_secret(name, secret):
    """Secret-looking names are recognised; ordinary fields are left alone."""
    assert logs.is_secret(name) is secret


def test_ordinary_values_are_untouched():
    """Text that merely mentions a bearer, and values of other types, pass unchanged."""
    out = io.StringIO()
    logs.configure("info", stream=out)

    structlog.get_logger().info("note", text="the bearer of news", count=3, ok=True, none=None)

    (line,) = json_lines(out)
    assert (line["text"], line["count"], line["ok"], line["none"]) == (
        "the bearer of news",
        3,
        True,
        None,
    )
