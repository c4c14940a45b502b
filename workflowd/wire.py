"""What may cross the wire: sizes, nesting and text that both ends check at their edge.

A value that breaks a rule is refused where it is made, with a message that
says which rule, so that one oversized or malformed result fails its step
instead of breaking the stream that carries it. Text is made valid UTF-8 at
the edge: a plugin's output decoded with `surrogateescape`, or a string with a
lone surrogate, reaches the other end with U+FFFD in place of what was not
text.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from workflowd.errors import WorkflowError
from workflowd.grpc_options import MAX_MESSAGE_BYTES

# One log line, progress message or error message.
MAX_TEXT_CHARS = 64 * 1024
# Lists and mappings inside one another, in step outputs and parameters.
MAX_NESTING = 64
# Room left in a message for what surrounds step outputs (ids, kind, framing).
ENVELOPE_BYTES = 4096

LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})

_ESCAPED = re.compile("[\udc80-\udcff]+")
_SURROGATE = re.compile("[\ud800-\udfff]")


class WireError(WorkflowError):
    """A value that cannot be sent, or was received, as it is."""

    code = "invalid_message"

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        if code:
            self.code = code


def clean_text(text: str, limit: int | None = MAX_TEXT_CHARS) -> str:
    """Valid UTF-8 text of at most `limit` characters (None: no limit)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # bytes that surrogateescape kept go back to bytes, decoded as UTF-8 decodes
        # anything invalid: one U+FFFD per bad byte; any other lone surrogate is one U+FFFD
        text = _ESCAPED.sub(
            lambda m: bytes(ord(c) - 0xDC00 for c in m.group()).decode("utf-8", "replace"), text
        )
        text = _SURROGATE.sub("\ufffd", text)
    if limit is not None and len(text) > limit:
        dropped = len(text) - limit
        text = text[:limit] + f"… [{dropped} characters dropped]"
    return text


def clean_value(value: Any) -> Any:
    """A JSON-like value with every string and key made valid UTF-8, nothing clipped."""
    if isinstance(value, str):
        return clean_text(value, None)
    if isinstance(value, dict):
        return {clean_text(str(k), None): clean_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_value(item) for item in value]
    return value


def fraction(value: float) -> float:
    """A progress fraction in 0..1, or -1 when unknown or not a number."""
    if not math.isfinite(value) or value < 0:
        return -1.0
    return min(value, 1.0)


def level(value: str) -> str:
    return value if value in LOG_LEVELS else "info"


def nesting(value: Any) -> int:
    """How deeply lists and mappings nest in a value, found without recursion."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list | tuple):
            deepest = max(deepest, depth)
            if depth > MAX_NESTING:
                return depth
            pending.extend((child, depth + 1) for child in item)
    return deepest


def encode_outputs(outputs: Any, limit_bytes: int = MAX_MESSAGE_BYTES) -> str:
    """Step outputs as JSON text for the wire; WireError when they cannot go as they are."""
    if not isinstance(outputs, dict):
        raise WireError(f"outputs must be a mapping, not {type(outputs).__name__}")
    if (depth := nesting(outputs)) > MAX_NESTING:
        raise WireError(f"outputs nested {depth} levels deep exceed the limit of {MAX_NESTING}")
    try:
        text = json.dumps(clean_value(outputs), allow_nan=False)
    except ValueError:
        raise WireError("outputs hold NaN or infinity, which JSON cannot carry") from None
    except TypeError as exc:
        raise WireError(f"outputs are not JSON: {exc}") from None
    size = len(text.encode("utf-8"))
    if size > limit_bytes:
        raise WireError(
            f"outputs of {size} bytes exceed the limit of {limit_bytes} bytes",
            code="outputs_too_large",
        )
    return text


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode_outputs(text: str) -> dict[str, Any]:
    """Step outputs received as JSON text; WireError when they are not a proper object."""
    try:
        value = json.loads(text or "{}", parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"outputs are not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise WireError("outputs are not a JSON object")
    if (depth := nesting(value)) > MAX_NESTING:
        raise WireError(f"outputs nested {depth} levels deep exceed the limit of {MAX_NESTING}")
    return clean_value(value)
