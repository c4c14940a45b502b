"""What both ends check before a value crosses the stream."""

from __future__ import annotations

import json

import pytest

from workflowd import wire


def test_lone_surrogates_become_replacement_characters() -> None:
    """Bytes decoded with surrogateescape, or lone surrogates, become U+FFFD; text stays."""
    undecodable = b"caf\xe9 ok".decode("utf-8", "surrogateescape")

    assert wire.clean_text(undecodable) == "caf\ufffd ok"
    assert wire.clean_text("a\ud800b") == "a\ufffdb"
    assert wire.clean_text(b"\xff\xfe".decode("utf-8", "surrogateescape")) == "\ufffd\ufffd"
    assert wire.clean_text("grüß ✓") == "grüß ✓"


def test_long_text_is_clipped_saying_so() -> None:
    """Text beyond the limit is cut, with a note of how much was dropped."""
    assert wire.clean_text("x" * 10, limit=4) == "xxxx… [6 characters dropped]"


def test_clean_value_reaches_keys_and_nested_text() -> None:
    """Every key and string inside a value is made valid UTF-8."""
    assert wire.clean_value({"k\udcff": ["v\udcff", 1, None]}) == {"k\ufffd": ["v\ufffd", 1, None]}


def test_outputs_beyond_the_limit_are_refused_with_their_size() -> None:
    """Outputs too large for a message are refused, naming their size and the limit."""
    with pytest.raises(wire.WireError) as refused:
        wire.encode_outputs({"blob": "x" * 1000}, limit_bytes=500)

    assert str(refused.value) == "outputs of 1012 bytes exceed the limit of 500 bytes"
    assert refused.value.code == "outputs_too_large"


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ({"x": float("nan")}, "outputs hold NaN or infinity"),
        ({"x": object()}, "outputs are not JSON"),
        ([1, 2], "outputs must be a mapping, not list"),
        ({"deep": json.loads("[" * 70 + "]" * 70)}, "outputs nested 65 levels deep"),
    ],
)
def test_outputs_that_json_cannot_carry_are_refused(outputs: object, message: str) -> None:
    """NaN, objects, non-mappings and deep nesting are refused before they are sent."""
    with pytest.raises(wire.WireError, match=message):
        wire.encode_outputs(outputs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "outputs are not valid JSON"),
        ('{"x": NaN}', "NaN is not a JSON number"),
        ("[1]", "outputs are not a JSON object"),
        ("[" * 100_000 + "]" * 100_000, "outputs are not valid JSON"),
        ('{"d": ' + "[" * 70 + "]" * 70 + "}", "nested 65 levels deep"),
    ],
)
def test_received_outputs_are_checked(text: str, message: str) -> None:
    """Received outputs must be a JSON object of finite numbers, not too deep."""
    with pytest.raises(wire.WireError, match=message):
        wire.decode_outputs(text)


def test_received_outputs_with_escaped_lone_surrogates_are_cleaned() -> None:
    """JSON escapes that decode to lone surrogates are replaced, not stored as they are."""
    assert wire.decode_outputs('{"s": "\\ud800!"}') == {"s": "\ufffd!"}


@pytest.mark.parametrize(
    ("given", "expected"),
    [(0.5, 0.5), (7.0, 1.0), (-0.1, -1.0), (float("nan"), -1.0), (float("inf"), -1.0)],
)
def test_progress_fractions_are_made_sane(given: float, expected: float) -> None:
    """A progress fraction is 0..1, or -1 for unknown; nothing else gets through."""
    assert wire.fraction(given) == expected


def test_unknown_log_levels_become_info() -> None:
    """A log level outside debug/info/warning/error is stored as info."""
    assert wire.level("error") == "error"
    assert wire.level("<script>") == "info"
