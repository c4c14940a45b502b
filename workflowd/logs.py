"""structlog set-up shared by the three programs.

JSON lines when stderr is not a terminal (journald, files, pipes), coloured
key=value lines on a terminal. Events are short snake_case names; context such
as run_id, step_id and agent is bound, never formatted into the event.

Two processors run before rendering:

- `run_context`: a line about a run carries `run_id`, `step_id` and `agent`
  (null when the line is about the run as a whole), so that the journal can be
  filtered by any of them.
- `redact`: values of fields named like secrets (token, password, secret, key,
  ...) and bearer credentials inside text are replaced by "<redacted>".
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "<redacted>"

RUN_CONTEXT = ("run_id", "step_id", "agent")

_SECRET_NAME = re.compile(
    r"token|passw|secret|credential|authorization|cookie|(^|[_-])(api_?|private_?)?key$",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(bearer)\s+[A-Za-z0-9._~+/=-]{16,}", re.IGNORECASE)


def is_secret(name: str) -> bool:
    """Whether a field of this name holds a secret."""
    return bool(_SECRET_NAME.search(name))


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        # the cheap test first: almost no log value mentions a credential scheme
        if "earer" in value or "EARER" in value:
            return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
        return value
    if isinstance(value, Mapping):
        return {
            key: REDACTED if isinstance(key, str) and is_secret(key) else _scrub(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    return value


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replace secret values, by field name at any depth and bearer credentials in text."""
    for key, value in event_dict.items():
        if key != "event" and is_secret(key):
            event_dict[key] = REDACTED
        elif value is not None and not isinstance(value, int | float | bool):
            event_dict[key] = _scrub(value)
    return event_dict


def run_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Give every line about a run all of run_id, step_id and agent."""
    if "run_id" in event_dict:
        event_dict.setdefault("step_id", None)
        event_dict.setdefault("agent", None)
    return event_dict


def _drop_unset_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """On a terminal, a run-wide line reads better without step_id=None agent=None."""
    for key in RUN_CONTEXT:
        if key in event_dict and event_dict[key] is None:
            del event_dict[key]
    return event_dict


def processors(json: bool, colors: bool = False) -> list[Processor]:
    """The processor chain: context, level, time, redaction, and one renderer."""
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        structlog.processors.UnicodeDecoder(),
        run_context,
        redact,
    ]
    if json:
        chain.append(structlog.processors.JSONRenderer())
    else:
        chain += [_drop_unset_context, structlog.dev.ConsoleRenderer(colors=colors)]
    return chain


def configure(level: str = "info", json: bool | None = None, stream: TextIO | None = None) -> None:
    """Log to `stream` (stderr): JSON lines unless it is a terminal, or as `json` says."""
    stream = sys.stderr if stream is None else stream
    tty = stream.isatty()
    if json is None:
        json = not tty
    structlog.configure(
        processors=processors(json, colors=tty),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )


def get(**context: object) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger().bind(**context)
