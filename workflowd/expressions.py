"""`${{ ... }}` expressions: found, checked and evaluated in jinja2's sandbox.

An expression reads `inputs`, `config`, `steps` and `run` and nothing else.
Calls, `**`, private attributes, filters and tests beyond a small list of
harmless ones, and deep nesting are refused when the definition is checked;
the immutable sandbox blocks attribute tricks at evaluation, and repeating
text or lists with `*` or formatting with `%` is bounded, so an expression
can neither execute code, touch the host, nor exhaust the coordinator.

A string that is exactly one expression evaluates to the value's own type (a
manifest stays a dict); text around expressions makes a string.
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
_MAX_NESTING = 32
_MAX_REPEAT = 100_000  # items or characters a `*` may produce
_MAX_JOINED = 1 << 24  # items or characters `+`, `~` or text around expressions may produce
_MAX_CONCAT = 16  # operands of `~` in one expression

FILTERS = frozenset(
    {
        "abs", "capitalize", "count", "d", "default", "dictsort", "first", "float", "int",
        "items", "join", "last", "length", "list", "lower", "max", "min", "reverse", "round",
        "sort", "string", "sum", "title", "tojson", "trim", "unique", "upper", "wordcount",
    }
)  # fmt: skip
TESTS = frozenset(
    {
        "boolean", "defined", "divisibleby", "eq", "even", "false", "float", "ge", "gt", "in",
        "integer", "le", "lt", "mapping", "ne", "none", "number", "odd", "sequence", "string",
        "true", "undefined",
    }
)  # fmt: skip


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with `*`, `**` and `%` held to sizes that cannot hurt.

    It also reads `a.b` as the key `b` when `a` is a mapping that holds it:
    jinja prefers attributes, so an input or output named `items`, `keys` or
    `update` would read as a dict method (or be refused by the sandbox)
    instead of as the value. Run data is JSON: keys come first.
    """

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if (
            operator == "+"
            and isinstance(left, str | list | tuple)
            and isinstance(right, str | list | tuple)
            and len(left) + len(right) > _MAX_JOINED
        ):
            raise SecurityError(f"+ would make more than {_MAX_JOINED} items")
        if operator == "**":
            raise SecurityError("** is not allowed")
        if operator == "%" and isinstance(left, str):
            raise SecurityError("formatting text with % is not allowed")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > _MAX_REPEAT
                ):
                    raise SecurityError(f"* would make more than {_MAX_REPEAT} items")
        return super().call_binop(context, operator, left, right)


_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False)
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


def _nesting(expr: str) -> int:
    """How deeply brackets nest, counted before jinja's recursive parser sees them."""
    depth = deepest = 0
    for char in expr:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest


def _parse(expr: str, step_ids: frozenset[str]) -> nodes.Expr:
    if not expr:
        raise ExpressionError("empty expression")
    if len(expr) > _MAX_LENGTH:
        raise ExpressionError(f"expression longer than {_MAX_LENGTH} characters")
    if _nesting(expr) > _MAX_NESTING:
        raise ExpressionError(f"expression nested deeper than {_MAX_NESTING} brackets")
    source = _rewrite(expr, step_ids)
    try:
        template = _ENV.parse("{{ (" + source + ") }}")
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"invalid expression {expr!r}: {exc.message}") from None
    except RecursionError:
        raise ExpressionError(f"expression {expr!r} is nested too deeply") from None
    output = template.body[0]
    if not (isinstance(output, nodes.Output) and len(output.nodes) == 1):
        raise ExpressionError(f"invalid expression {expr!r}")
    tree = output.nodes[0]
    _check_shape(expr, tree)
    return tree


def _check_shape(expr: str, tree: nodes.Expr) -> None:
    """Refuse what an expression has no business doing, before it ever runs."""
    if _all(tree, nodes.Call):
        raise ExpressionError(f"{expr!r}: expressions cannot call functions or methods")
    if _all(tree, nodes.Pow):
        raise ExpressionError(f"{expr!r}: expressions cannot use **")
    text_on_left = (
        isinstance(node.left, nodes.Const) and isinstance(node.left.value, str)
        for node in _all(tree, nodes.Mod)
    )
    if any(text_on_left):
        raise ExpressionError(f"{expr!r}: expressions cannot format text with %")
    if sum(len(node.nodes) for node in _all(tree, nodes.Concat)) > _MAX_CONCAT:
        raise ExpressionError(f"{expr!r}: more than {_MAX_CONCAT} operands of ~")
    for node in _all(tree, nodes.Filter):
        if node.name not in FILTERS:
            raise ExpressionError(
                f"{expr!r}: filter {node.name!r} is not allowed; use one of "
                + ", ".join(sorted(FILTERS))
            )
    for node in _all(tree, nodes.Test):
        if node.name not in TESTS:
            raise ExpressionError(f"{expr!r}: test {node.name!r} is not allowed")
    for node in _all(tree, (nodes.Getattr, nodes.Getitem)):
        name = _subscript_name(node)
        # `inputs._x` is left to the name check, which says the input is undeclared
        if name is not None and name.startswith("_") and not isinstance(node.node, nodes.Name):
            raise ExpressionError(f"{expr!r}: expressions cannot read private attributes")


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
        _require_data(value, expr)
        return value
    except ExpressionError:
        raise
    except UndefinedError as exc:
        raise ExpressionError(f"{expr!r}: {exc.message}") from None
    except SecurityError as exc:
        raise ExpressionError(f"{expr!r}: refused by the sandbox: {exc}") from None
    except RecursionError:
        raise ExpressionError(f"{expr!r}: nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any evaluation failure is the expression's fault
        raise ExpressionError(f"{expr!r}: {type(exc).__name__}: {exc}") from None


def _require_data(value: Any, expr: str) -> None:
    """Refuse values that are not plain data: a method, a class, NaN cannot be stored or sent."""
    pending = [value]
    while pending:
        item = pending.pop()
        if item is None or isinstance(item, bool | int | str):
            continue
        if isinstance(item, float) and item == item and abs(item) != float("inf"):
            continue
        if isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, Mapping) and all(isinstance(key, str) for key in item):
            pending.extend(item.values())
        else:
            raise ExpressionError(
                f"{expr!r} gives {type(item).__name__}, not data "
                "(text, a number, a boolean, null, a list or a mapping)"
            )


def render(value: Any, context: Mapping[str, Any], step_ids: frozenset[str]) -> Any:
    """Evaluate every expression inside a value, returning a new value."""
    if isinstance(value, str):
        whole = _PATTERN.fullmatch(value.strip())
        if whole and value.strip().count("${{") == 1:
            return _evaluate_one(whole.group(1).strip(), context, step_ids)
        if "${{" not in value:
            return value
        return _joined(value, context, step_ids)
    if isinstance(value, Mapping):
        return {key: render(item, context, step_ids) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [render(item, context, step_ids) for item in value]
    return value


def _joined(text: str, context: Mapping[str, Any], step_ids: frozenset[str]) -> str:
    """Text with expressions in it, each replaced by its value as text, within a size."""
    pieces = []
    size = 0
    position = 0
    for match in _PATTERN.finditer(text):
        value = _as_text(_evaluate_one(match.group(1).strip(), context, step_ids))
        pieces += [text[position : match.start()], value]
        position = match.end()
        size += len(pieces[-2]) + len(value)
        if size > _MAX_JOINED:
            raise ExpressionError(f"text with expressions longer than {_MAX_JOINED} characters")
    pieces.append(text[position:])
    return "".join(pieces)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)
