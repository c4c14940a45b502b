"""Which installed plugins an allow-list lets in."""

from __future__ import annotations

from workflowd.tasks import SAFE_PLUGINS, installed_plugins, load_plugins


def test_the_default_is_the_safe_built_in_plugins() -> None:
    """The default allow-list is the built-in plugins that run no commands."""
    assert sorted(load_plugins(SAFE_PLUGINS)) == sorted(SAFE_PLUGINS)
    assert "shell.run" in installed_plugins()


def test_command_plugins_need_their_exact_name() -> None:
    """shell.run is let in by its name only: neither '*' nor 'shell.*' admit it."""
    assert "shell.run" not in load_plugins(("*",))
    assert "shell.run" not in load_plugins(("shell.*",))
    assert sorted(load_plugins(("shell.run", "noop"))) == ["noop", "shell.run"]
