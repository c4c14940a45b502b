"""workflowd: the coordinator of remote workflows, and the light modules its agents share."""

__version__ = "0.1.0"

DEFAULT_PORT = 7471
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
