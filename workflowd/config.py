"""Configuration files for the daemons: TOML under flags and environment variables.

`config_file` gives a click command `--config FILE` and `--print-config`.
The file's keys are the command's long option names with underscores
(`--heartbeat-timeout` is `heartbeat_timeout`). Precedence, highest first:
flags, environment variables, the file, built-in defaults. This is click's
own order once the file is its `default_map`.

A missing default file is fine (the built-in defaults apply); a file named
with `--config` or its environment variable must exist. An unknown key, or a
value of the wrong type, is an error naming the file and the key.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

_PRINT = "workflowd.config.print"
_FILE = "workflowd.config.file"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# Values printed as "<redacted>": they are secrets themselves. (Options such as
# a TLS key hold a path to a file, which is shown.)
_SECRET_KEY = re.compile(r"token|passw|secret|credential", re.IGNORECASE)


def key_of(param: click.Parameter) -> str:
    """The file's key for an option: its longest flag, without dashes, in snake_case."""
    flag = max((opt for opt in param.opts if opt.startswith("--")), key=len, default=param.name)
    return str(flag).lstrip("-").replace("-", "_")


def _file_options(command: click.Command) -> dict[str, click.Option]:
    """The options a file may set, by key: those whose value reaches the command."""
    return {
        key_of(param): param
        for param in command.params
        if isinstance(param, click.Option) and param.expose_value and param.name
    }


def read(path: Path, command: click.Command, ctx: click.Context) -> dict[str, Any]:
    """A `default_map` for `command` from the TOML file at `path`, every value checked."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise click.FileError(str(path), hint=str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{path}: not valid TOML: {exc}") from None
    options = _file_options(command)
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        param = options.get(key)
        if param is None:
            known = ", ".join(sorted(options))
            raise click.BadParameter(f"{path}: unknown key {key!r} (known keys: {known})")
        if param.multiple:
            if isinstance(value, Mapping):
                # a table for KEY=VALUE options: [labels] role = "web"
                value = [f"{k}={v}" for k, v in value.items()]
            elif not isinstance(value, list):
                raise click.BadParameter(f"{path}: {key}: expected a list, got {value!r}")
        try:
            param.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise click.BadParameter(f"{path}: {key}: {exc.message}") from None
        defaults[str(param.name)] = value
    return defaults


def _load(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is None:
        return None
    source = ctx.get_parameter_source(param.name or "")
    if not value.exists():
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            raise click.BadParameter(f"{value}: no such file", ctx=ctx, param=param)
        return None
    try:
        defaults = read(value, ctx.command, ctx)
    except click.BadParameter as exc:
        exc.ctx, exc.param = ctx, param
        raise
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[_FILE] = value
    return value


def _remember_print(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta[_PRINT] = value
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    # a JSON string is a valid TOML basic string
    return json.dumps(str(value), ensure_ascii=False)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _source(ctx: click.Context, param: click.Option) -> str:
    source = ctx.get_parameter_source(param.name or "")
    if source == ParameterSource.COMMANDLINE:
        return "flag"
    if source == ParameterSource.ENVIRONMENT:
        names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
        found = next((name for name in names if os.environ.get(name)), "")
        return f"environment {found}" if found else "environment"
    if source == ParameterSource.DEFAULT_MAP:
        return str(ctx.meta.get(_FILE, "file"))
    return "default"


def render(ctx: click.Context, values: Mapping[str, Any]) -> str:
    """The effective configuration as TOML, each value with where it came from."""
    options = _file_options(ctx.command)
    lines = [f"# {ctx.command_path}: effective configuration (flags > environment > file)"]
    tables = []
    for key, param in options.items():
        if param.name not in values:
            continue
        value = values[param.name]
        note = f"  # {_source(ctx, param)}"
        if value is None:
            lines.append(f"# {key} is not set{note.replace('  #', ';')}")
        elif _SECRET_KEY.search(key):
            lines.append(f'{key} = "<redacted>"{note}')
        elif isinstance(value, Mapping):
            tables.append((key, value, note))
        else:
            if isinstance(value, Path):
                value = str(value)
            lines.append(f"{key} = {_toml_value(value)}{note}")
    for key, table, note in tables:
        lines.append("")
        lines.append(f"[{key}]{note}")
        lines.extend(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in table.items())
    return "\n".join(lines)


def config_file(default_path: Path, envvar: str) -> Callable[[click.Command], click.Command]:
    """Give a click command `--config FILE` (read first) and `--print-config`.

    Apply it above `@click.command`, so that it sees every option of the command.
    """

    def decorate(command: click.Command) -> click.Command:
        command.params.insert(
            0,
            click.Option(
                ["--config", "config_path"],
                type=click.Path(dir_okay=False, path_type=Path),
                default=default_path,
                envvar=envvar,
                show_envvar=True,
                show_default=True,
                is_eager=True,
                expose_value=False,
                callback=_load,
                help="TOML file of option values (keys are option names with underscores). "
                "Flags and environment variables override it.",
            ),
        )
        command.params.append(
            click.Option(
                ["--print-config"],
                is_flag=True,
                expose_value=False,
                callback=_remember_print,
                help="Print the effective configuration as TOML and exit.",
            )
        )
        original = command.callback
        if original is None:
            raise TypeError(f"{command.name}: a command without a callback has no configuration")

        @functools.wraps(original)
        def callback(**values: Any) -> Any:
            ctx = click.get_current_context()
            if ctx.meta.get(_PRINT):
                click.echo(render(ctx, values))
                ctx.exit(0)
            return original(**values)

        command.callback = callback
        return command

    return decorate
