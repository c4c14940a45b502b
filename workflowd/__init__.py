"""workflowd: the coordinator of remote workflows, and the light modules its agents share."""

import os

# Steps start subprocesses (shell.run) while gRPC's threads are busy, and gRPC's
# fork handlers can crash such a child before it reaches exec. Nothing here uses
# gRPC in a forked child, so the handlers are off unless the environment asks.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

__version__ = "0.1.0"

DEFAULT_PORT = 7471
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
