"""`${{ ... }}` expressions: found, checked and evaluated in jinja2's sandbox.

An expression reads `inputs`, `config`, `steps` and `run` and nothing else.
Calls are refused when the definition is checked, and the immutable sandbox
blocks attribute tricks at evaluation, so an expression cannot execute code or
touch the host. A string that is exactly one expression evaluates to the
value's own type (a manifest stays a dict); text around expressions makes a
string.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from workflowd.errors import WorkflowError

ROOTS = frozenset({"inputs", "config", "steps", "run"})
_PATTERN = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
_STEP_REF = re.compile(r"\bsteps\.([a-z0-9][a-z0-9_-]*)")
_MAX_LENGTH = 2000


_MAX_ITEMS = 100_000  # the longest string or list an operator may build
_MAX_BITS = 100_000  # the largest integer an operator may build


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, str | list | tuple) else None


def _bits(value: Any) -> int:
    return abs(value).bit_length() if isinstance(value, int) and not isinstance(value, bool) else 0


class _Environment(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox, for run data.

    It reads `a.b` as the key `b` when `a` is a mapping that holds it: jinja
    prefers attributes, so an input or output named `items`, `keys` or
    `update` would read as a dict method (or be refused by the sandbox)
    instead of as the value. Run data is JSON: keys come first.

    Its arithmetic cannot exhaust memory or time: `*`, `**` and `+` refuse to
    build strings, lists or integers beyond fixed sizes.
    """

    intercepted_binops = frozenset({"*", "**", "+"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        too_large = SecurityError(f"{operator}: the result would be too large")
        if operator == "**":
            exponent = right if isinstance(right, int | float) else 0
            if _bits(left) > 1 and exponent * _bits(left) > _MAX_BITS:
                raise too_large
        elif operator == "*":
            for sequence, times in ((left, right), (right, left)):
                size = _size(sequence)
                if size is not None and isinstance(times, int) and size * times > _MAX_ITEMS:
                    raise too_large
            if _bits(left) + _bits(right) > _MAX_BITS:
                raise too_large
        elif (_size(left) or 0) + (_size(right) or 0) > _MAX_ITEMS:
            raise too_large
        return super().call_binop(context, operator, left, right)


_ENV = _Environment(undefined=StrictUndefined, autoescape=False)
_ENV.globals.clear()  # no range(), dict(), lipsum(), namespace() ...


class ExpressionError(WorkflowError):
    code = "expression_error"


def find(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """Yield (path, expression text) for every expression inside a value."""
    if isinstance(value, str):
        for match in _PATTERN.finditer(value):
            yield path, match.group(1).strip()
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from find(item, (*path, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from find(item, (*path, index))


def contains(value: Any) -> bool:
    return next(find(value), None) is not None


def _rewrite(expr: str, step_ids: frozenset[str]) -> str:
    """Turn `steps.manifest-a` into `steps["manifest-a"]`: step ids may hold hyphens."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        while name not in step_ids and "-" in name:
            name = name.rsplit("-", 1)[0]
        if name not in step_ids:
            return match.group(0)
        return f'steps["{name}"]' + match.group(1)[len(name) :]

    return _STEP_REF.sub(replace, expr)


def _parse(expr: str, step_ids: frozenset[str]) -> nodes.Expr:
    if not expr:
        raise ExpressionError("empty expression")
    if len(expr) > _MAX_LENGTH:
        raise ExpressionError(f"expression longer than {_MAX_LENGTH} characters")
    source = _rewrite(expr, step_ids)
    try:
        template = _ENV.parse("{{ (" + source + ") }}")
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"invalid expression {expr!r}: {exc.message}") from None
    output = template.body[0]
    if not (isinstance(output, nodes.Output) and len(output.nodes) == 1):
        raise ExpressionError(f"invalid expression {expr!r}")
    return output.nodes[0]


def _all(tree: nodes.Node, kind: type | tuple[type, ...]) -> list[Any]:
    """Every node of a kind in a tree, the root included (jinja's find_all skips it)."""
    found = [tree] if isinstance(tree, kind) else []
    return found + list(tree.find_all(kind))


def _subscript_name(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        return str(node.arg.value)
    return None


def references(expr: str, step_ids: frozenset[str]) -> set[tuple[str, str]]:
    """Check an expression and return what it reads, as (root, name) pairs.

    `name` is the input, config key or step id read, or "" for a whole root.
    Raises ExpressionError for syntax errors, calls, and unknown names.
    """
    tree = _parse(expr, step_ids)
    if _all(tree, nodes.Call):
        raise ExpressionError(f"{expr!r}: expressions cannot call functions or methods")
    for name in _all(tree, nodes.Name):
        if name.name not in ROOTS:
            raise ExpressionError(
                f"{expr!r}: unknown name {name.name!r}; expressions read only "
                + ", ".join(sorted(ROOTS))
            )
    found: set[tuple[str, str]] = set()
    names_under_subscript = set()
    for node in _all(tree, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node.node, nodes.Name):
            key = _subscript_name(node)
            if key is not None:
                found.add((node.node.name, key))
                names_under_subscript.add(id(node.node))
    for name in _all(tree, nodes.Name):
        if id(name) not in names_under_subscript:
            found.add((name.name, ""))
    return found


def _evaluate_one(expr: str, context: Mapping[str, Any], step_ids: frozenset[str]) -> Any:
    _parse(expr, step_ids)  # same checks as at load time
    try:
        compiled = _ENV.compile_expression(_rewrite(expr, step_ids), undefined_to_none=False)
        value = compiled(**context)
        if isinstance(value, Undefined):
            value._fail_with_undefined_error()
        return value
    except UndefinedError as exc:
        raise ExpressionError(f"{expr!r}: {exc.message}") from None
    except SecurityError as exc:
        raise ExpressionError(f"{expr!r}: refused by the sandbox: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any evaluation failure is the expression's fault
        raise ExpressionError(f"{expr!r}: {type(exc).__name__}: {exc}") from None


def render(value: Any, context: Mapping[str, Any], step_ids: frozenset[str]) -> Any:
    """Evaluate every expression inside a value, returning a new value."""
    if isinstance(value, str):
        whole = _PATTERN.fullmatch(value.strip())
        if whole and value.strip().count("${{") == 1:
            return _evaluate_one(whole.group(1).strip(), context, step_ids)
        if "${{" not in value:
            return value
        return _PATTERN.sub(
            lambda m: _as_text(_evaluate_one(m.group(1).strip(), context, step_ids)), value
        )
    if isinstance(value, Mapping):
        return {key: render(item, context, step_ids) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [render(item, context, step_ids) for item in value]
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)
