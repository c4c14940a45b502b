"""`web.deploy`: puts a small real web service in place on a host and health-checks it.

The service is Python's own `http.server` serving a site directory that holds
`config.json` (the deployed version and message). Deploying writes the new
configuration (keeping the previous one), makes sure the server runs on the
host's port, and checks that the port serves the new version. A failed
health check fails the step; on its last attempt the rollback puts the
previous configuration back, or removes the service when there was none.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from pydantic import BaseModel, ConfigDict, Field

from workflowd.errors import TaskError
from workflowd.tasks import StepContext, Task


class DeployParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, max_length=200)
    message: str = ""
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Default: the host's port label."
    )
    site: str = Field(default="web", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    health_timeout_s: float = Field(default=5.0, gt=0, le=300)


class DeployOutputs(BaseModel):
    url: str
    version: str
    pid: int


def _port(ctx: StepContext, params: DeployParams) -> int:
    if params.port is not None:
        return params.port
    label = ctx.labels.get("port")
    if label is None or not label.isdigit():
        raise TaskError(
            f"no port for {ctx.host}: give port, or label the agent port=N", retryable=False
        )
    return int(label)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # a zombie child of ours still answers kill(0); reap it if it has exited
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    return True


def _served_version(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - our own loopback URL
            return str(json.loads(response.read()).get("version"))
    except (OSError, ValueError, urllib.error.URLError):
        return None


class _Site:
    def __init__(self, ctx: StepContext, params: DeployParams) -> None:
        self.dir = ctx.state_dir / "sites" / params.site
        self.config = self.dir / "config.json"
        self.previous = self.dir / "config.json.previous"
        self.pid_file = self.dir / "server.pid"
        self.port = _port(ctx, params)
        self.url = f"http://127.0.0.1:{self.port}/config.json"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def start(self) -> int:
        log = (self.dir / "server.log").open("ab")
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1"],
            cwd=self.dir,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # the service outlives the step and the agent's restarts
        )
        self.pid_file.write_text(str(process.pid))
        return process.pid

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self.pid_file.unlink(missing_ok=True)


class WebDeploy(Task):
    name = "web.deploy"
    description = "Deploys a small web service (config + http.server) and health-checks it."
    Params = DeployParams
    Outputs = DeployOutputs

    def check(self, ctx: StepContext, params: DeployParams) -> DeployOutputs | None:
        site = _Site(ctx, params)
        pid = site.pid()
        if pid is not None and _served_version(site.url) == params.version:
            return DeployOutputs(url=site.url, version=params.version, pid=pid)
        return None

    def run(self, ctx: StepContext, params: DeployParams) -> DeployOutputs:
        site = _Site(ctx, params)
        site.dir.mkdir(parents=True, exist_ok=True)
        if site.config.exists():
            site.config.replace(site.previous)
        payload = {"version": params.version, "message": params.message, "host": ctx.host}
        site.config.write_text(json.dumps(payload))
        ctx.log.info("config_written", version=params.version, site=str(site.dir))

        pid = site.pid() or site.start()
        ctx.progress(0.5, f"health-checking {site.url}")
        deadline = time.monotonic() + params.health_timeout_s
        seen = None
        while time.monotonic() < deadline:
            ctx.raise_if_cancelled()
            seen = _served_version(site.url)
            if seen == params.version:
                ctx.progress(1.0, f"serving {params.version}")
                return DeployOutputs(url=site.url, version=params.version, pid=pid)
            time.sleep(0.1)
        raise TaskError(
            f"health check failed on {ctx.host}: {site.url} serves version {seen!r}, "
            f"not {params.version!r}, after {params.health_timeout_s:g}s"
        )

    def rollback(self, ctx: StepContext, params: DeployParams) -> None:
        site = _Site(ctx, params)
        if site.previous.exists():
            site.previous.replace(site.config)
            ctx.log.warning("rolled_back", site=str(site.dir), to="previous configuration")
        else:
            site.stop()
            site.config.unlink(missing_ok=True)
            ctx.log.warning("rolled_back", site=str(site.dir), to="nothing deployed")
