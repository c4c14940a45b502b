"""workflow-agent: runs workflow steps on a remote host for workflowd."""

import os

# Steps start subprocesses (shell.run) while gRPC's threads are busy, and gRPC's
# fork handlers can crash such a child before it reaches exec. Nothing here uses
# gRPC in a forked child, so the handlers are off unless the environment asks.
# (Set here as well as in workflowd: this package imports grpc before workflowd.)
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
