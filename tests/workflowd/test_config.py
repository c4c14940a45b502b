"""Configuration files under environment variables and flags, for workflowd and the agent."""

from __future__ import annotations

import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from workflow_agent import cli as agent_cli
from workflowd import daemon
from workflowd.config import config_file

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def effective(command: click.Command, *args: str, env: dict[str, str] | None = None) -> dict:
    """The configuration `command --print-config` reports, parsed back from its TOML."""
    result = CliRunner().invoke(command, [*args, "--print-config"], env=env or {})
    assert result.exit_code == 0, result.output
    return tomllib.loads(result.output)


def refused(command: click.Command, *args: str, env: dict[str, str] | None = None) -> str:
    """The error text of a command line that must not start."""
    result = CliRunner().invoke(command, list(args), env=env or {})
    assert result.exit_code == 2, result.output
    return result.output


@pytest.fixture(autouse=True)
def no_default_file(monkeypatch, tmp_path):
    """The default file is one that does not exist, whatever this machine has in /etc."""
    for command in (daemon.main, agent_cli.main):
        option = next(p for p in command.params if p.name == "config_path")
        monkeypatch.setattr(option, "default", tmp_path / "absent" / "default.toml")
    for name in ("WORKFLOWD_CONFIG", "WORKFLOWD_LISTEN", "WORKFLOW_AGENT_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def toml(tmp_path):
    """Write a TOML file and return its path."""

    def write(text: str, name: str = "config.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def test_defaults_without_any_file():
    """A missing default file is fine: the built-in defaults apply."""
    config = effective(daemon.main)

    assert config["listen"] == "127.0.0.1:7471"
    assert config["heartbeat_timeout"] == 15.0
    assert config["metrics_listen"] == ""


def test_file_sets_values(toml):
    """Values in the file replace the defaults."""
    path = toml('listen = "127.0.0.1:9000"\nheartbeat_timeout = 5\nlog_level = "debug"\n')

    config = effective(daemon.main, "--config", str(path))

    assert config["listen"] == "127.0.0.1:9000"
    assert config["heartbeat_timeout"] == 5.0
    assert config["log_level"] == "debug"


def test_environment_beats_file_and_flag_beats_both(toml):
    """Precedence is flags, then environment variables, then the file, then defaults."""
    path = toml('listen = "127.0.0.1:1"\nheartbeat_timeout = 5\nagent_wait_limit = 60\n')
    env = {"WORKFLOWD_LISTEN": "127.0.0.1:2", "WORKFLOWD_HEARTBEAT_TIMEOUT": "6"}

    config = effective(daemon.main, "--config", str(path), "--heartbeat-timeout", "7", env=env)

    assert config["listen"] == "127.0.0.1:2"  # environment over file
    assert config["heartbeat_timeout"] == 7.0  # flag over environment and file
    assert config["agent_wait_limit"] == 60.0  # file over default


def test_config_file_from_the_environment(toml):
    """WORKFLOWD_CONFIG names the file as --config does."""
    path = toml('listen = "127.0.0.1:9001"\n')

    config = effective(daemon.main, env={"WORKFLOWD_CONFIG": str(path)})

    assert config["listen"] == "127.0.0.1:9001"


def test_print_config_names_where_each_value_comes_from(toml):
    """Each printed value is annotated with its source: flag, environment, file or default."""
    path = toml("heartbeat_timeout = 5\n", "site.toml")
    result = CliRunner().invoke(
        daemon.main,
        ["--config", str(path), "--log-level", "debug", "--print-config"],
        env={"WORKFLOWD_LISTEN": "127.0.0.1:2"},
    )

    lines = result.output.splitlines()
    assert 'listen = "127.0.0.1:2"  # environment WORKFLOWD_LISTEN' in lines
    assert 'log_level = "debug"  # flag' in lines
    assert f"heartbeat_timeout = 5.0  # {path}" in lines
    assert "agent_wait_limit = 3600.0  # default" in lines


def test_printed_configuration_reads_back_the_same(toml, tmp_path):
    """What --print-config prints is a configuration file that gives the same configuration."""
    first = CliRunner().invoke(
        agent_cli.main,
        ["--label", "role=web", "--label", "zone=a b", "--allow", "noop", "--print-config"],
    )
    path = toml(first.output, "printed.toml")

    again = effective(agent_cli.main, "--config", str(path))

    assert again == tomllib.loads(first.output)
    assert again["label"] == {"role": "web", "zone": "a b"}
    assert again["allow"] == ["noop"]


def test_agent_labels_as_a_table(toml):
    """The agent's labels are a TOML table; --label flags replace the labels of the file."""
    path = toml('allow = ["files.*"]\ngrace = 3\n[label]\nrole = "db"\n')

    from_file = effective(agent_cli.main, "--config", str(path))
    from_flag = effective(agent_cli.main, "--config", str(path), "--label", "role=web")

    assert from_file["label"] == {"role": "db"}
    assert from_file["allow"] == ["files.*"]
    assert from_file["grace"] == 3.0
    assert from_flag["label"] == {"role": "web"}


def test_missing_explicit_file_is_an_error(tmp_path):
    """A file named with --config must exist."""
    output = refused(daemon.main, "--config", str(tmp_path / "nope.toml"))

    assert f"{tmp_path / 'nope.toml'}: no such file" in output


def test_unknown_key_names_the_key_and_file(toml):
    """A misspelt key stops the daemon, naming the key, the file and the keys it knows."""
    path = toml('listne = "127.0.0.1:1"\n')

    output = refused(daemon.main, "--config", str(path))

    assert f"{path}: unknown key 'listne'" in output
    assert "listen" in output.split("known keys:")[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('heartbeat_timeout = "soon"', "heartbeat_timeout: 'soon' is not a valid float"),
        ("heartbeat_timeout = 0.1", "heartbeat_timeout: 0.1 is not in the range x>=0.5"),
        ('log_level = "loud"', "log_level: 'loud' is not one of"),
        ("listen = [", "not valid TOML"),
    ],
)
def test_bad_values_name_the_key_and_file(toml, text, message):
    """A value of the wrong type or out of range is refused before anything starts."""
    path = toml(text + "\n")

    output = refused(daemon.main, "--config", str(path))

    assert str(path) in output
    assert message in output


def test_a_list_option_needs_a_list(toml):
    """A repeatable option given one string in the file is refused, not split into letters."""
    path = toml('allow = "noop"\n')

    output = refused(agent_cli.main, "--config", str(path))

    assert "allow: expected a list" in output


def test_secrets_are_not_printed(tmp_path):
    """An option named like a secret is printed as <redacted>."""

    @config_file(tmp_path / "absent.toml", "TEST_CONFIG")
    @click.command()
    @click.option("--api-token", default="")
    @click.option("--name", default="x")
    def command(api_token: str, name: str) -> None:
        raise AssertionError("--print-config must not start the command")

    result = CliRunner().invoke(command, ["--api-token", "s3cr3t", "--print-config"])

    assert result.exit_code == 0, result.output
    assert "s3cr3t" not in result.output
    assert 'api_token = "<redacted>"  # flag' in result.output


@pytest.mark.parametrize(
    ("command", "example"),
    [(daemon.main, "workflowd.toml"), (agent_cli.main, "agent.toml")],
)
def test_example_files_are_valid(command, example):
    """The example configuration files in deploy/ load without errors."""
    config = effective(command, "--config", str(DEPLOY / example))

    assert config["log_level"] == "info"
