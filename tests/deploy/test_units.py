"""The systemd units in deploy/: systemd accepts them, and they say what operators rely on."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BIN = Path(sys.executable).parent
UNITS = {"workflowd.service": "workflowd", "workflow-agent.service": "workflow-agent"}

# The most `systemd-analyze security` may rate each unit (0 is locked down, 10 wide open).
# The agent runs arbitrary task plugins, so it keeps more of the system.
EXPOSURE_LIMIT = {"workflowd.service": 2.0, "workflow-agent.service": 4.0}


def settings(unit: str) -> dict[str, list[str]]:
    """A unit's settings: every value of each key of the [Service] section, in order."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in (DEPLOY / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: install Debian's systemd package (.ci/run does)"
    return tool


@pytest.fixture
def local_units(tmp_path: Path) -> Path:
    """Copies of the units whose ExecStart runs this environment's programs, not /usr/local."""
    for unit, program in UNITS.items():
        text = (DEPLOY / unit).read_text()
        text = text.replace(f"/usr/local/bin/{program} ", f"{BIN / program} ")
        (tmp_path / unit).write_text(text)
    return tmp_path


def test_units_verify_cleanly(local_units: Path):
    """systemd-analyze verify reports nothing at all: no unknown key, no bad value."""
    done = subprocess.run(
        [analyze(), "verify", *(str(local_units / unit) for unit in UNITS)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    # verify exits 0 even for unknown keys and unparsable values: any output is a finding
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""


def test_verify_catches_a_broken_unit(local_units: Path):
    """The check above would notice a mistake: a misspelt type and key are reported."""
    unit = local_units / "workflowd.service"
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notfy\nWatchdogSecs=3s"))

    done = subprocess.run(
        [analyze(), "verify", str(unit)], capture_output=True, text=True, check=False, timeout=120
    )

    assert "notfy" in done.stderr
    assert "WatchdogSecs" in done.stderr


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_security_exposure(local_units: Path, unit: str):
    """systemd-analyze security rates the sandboxing of each unit within its limit."""
    done = subprocess.run(
        [analyze(), "security", "--offline=yes", "--no-pager", str(local_units / unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= EXPOSURE_LIMIT[unit], done.stdout


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_units_are_notify_services_with_a_watchdog(unit: str):
    """Both daemons are Type=notify, watched, restarted on failure, and stopped with SIGTERM."""
    found = settings(unit)

    assert found["Service.Type"] == ["notify"]
    assert found["Service.NotifyAccess"] == ["main"]
    assert found["Service.WatchdogSec"] == ["30s"]
    assert found["Service.Restart"] == ["on-failure"]
    assert found["Service.KillSignal"] == ["SIGTERM"]


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_units_run_sandboxed_as_their_own_user(unit: str):
    """A dedicated user, a state directory, and the usual sandboxing."""
    found = settings(unit)
    program = UNITS[unit]

    assert found["Service.User"] == [program]
    assert found["Service.StateDirectory"] == [program]
    assert found["Service.ProtectSystem"] == ["strict"]
    assert found["Service.PrivateTmp"] == ["yes"]
    assert found["Service.NoNewPrivileges"] == ["yes"]
    assert found["Service.CapabilityBoundingSet"] == [""]
    assert found["Service.AmbientCapabilities"] == [""]


@pytest.mark.parametrize(
    ("unit", "example"),
    [("workflowd.service", "workflowd.toml"), ("workflow-agent.service", "agent.toml")],
)
def test_units_read_the_example_configuration(unit: str, example: str):
    """ExecStart passes --config, the install note installs the example file to that path."""
    (command,) = settings(unit)["Service.ExecStart"]
    argv = shlex.split(command)
    config = argv[argv.index("--config") + 1]

    assert argv[0] == f"/usr/local/bin/{UNITS[unit]}"
    assert (DEPLOY / example).exists()
    assert f"deploy/{example} {config}" in (DEPLOY / "README.md").read_text()
