"""Connected agents: one session per agent stream, and the registry of them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from workflowd import batching
from workflowd.engine import AgentView
from workflowd.rpc import workflow_pb2 as pb

AttemptKey = tuple[str, str, int]  # run id, step id, attempt

# A stored result is acknowledged with the next step start to its agent, or
# after this long in a message of its own (with every other one waiting then).
ACK_LINGER_S = 0.02
ACKS_PER_MESSAGE = 100  # a few hundred bytes each: a message stays far below any limit


@dataclass(eq=False)
class AgentSession:
    """One live stream to one agent. `send` never blocks; a writer task drains it."""

    name: str
    labels: dict[str, str]
    plugins: frozenset[str]  # names only: the schemas are stored, not kept per stream
    version: str
    running: set[AttemptKey] = field(default_factory=set)
    draining: bool = False  # shutting down: finishes what it runs, takes nothing new
    closed: bool = False  # the stream has ended: nothing more can reach the agent on it
    rejected: int = 0  # reports refused: malformed, or about attempts it was never given
    connected_at: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    outbox: asyncio.Queue[pb.CoordinatorMessage | None] = field(default_factory=asyncio.Queue)
    acks: list[pb.AttemptRef] = field(default_factory=list)  # not sent yet
    ack_timer: asyncio.TimerHandle | None = None
    batched_acks: bool = False  # the agent reads acknowledgements sent together
    batched_starts: bool = False  # the agent reads several step starts in one message
    ending: bool = False  # the writer has taken the end of the stream from the outbox

    def __post_init__(self) -> None:
        self.plugins = frozenset(self.plugins)  # any iterable of names (a dict: its keys)

    def send(self, message: pb.CoordinatorMessage) -> None:
        if self.acks and message.WhichOneof("kind") == "start":
            if len(self.acks) <= ACKS_PER_MESSAGE:
                message.start.acks.extend(self._take_acks())
            else:
                self.send_acks()
        self.outbox.put_nowait(message)

    async def take_outgoing(self) -> list[pb.CoordinatorMessage] | None:
        """The messages waiting to be written, at least one; None once the stream is to end."""
        if self.ending or (first := await self.outbox.get()) is None:
            return None
        taken = [first]
        while not self.outbox.empty() and len(taken) < batching.MAX_PER_MESSAGE:
            message = self.outbox.get_nowait()
            if message is None:
                self.ending = True  # what came before it still goes
                break
            taken.append(message)
        return taken

    def acknowledge(self, ref: pb.AttemptRef) -> None:
        """Tell the agent its result is stored: with its next step start, or soon."""
        if not self.batched_acks:
            self.outbox.put_nowait(pb.CoordinatorMessage(ack=pb.ResultAck(ref=ref)))
            return
        self.acks.append(ref)
        if self.ack_timer is None:
            self.ack_timer = asyncio.get_running_loop().call_later(ACK_LINGER_S, self.send_acks)

    def send_acks(self) -> None:
        """Send the acknowledgements waiting, ACKS_PER_MESSAGE to a message."""
        waiting = self._take_acks()
        for at in range(0, len(waiting), ACKS_PER_MESSAGE):
            first, *more = waiting[at : at + ACKS_PER_MESSAGE]
            self.outbox.put_nowait(pb.CoordinatorMessage(ack=pb.ResultAck(ref=first, more=more)))

    def _take_acks(self) -> list[pb.AttemptRef]:
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
        taken, self.acks = self.acks, []
        return taken

    def close(self) -> None:
        """Ask the writer to end the stream, after the acknowledgements waiting."""
        self.send_acks()
        self.outbox.put_nowait(None)

    def view(self) -> AgentView:
        return AgentView(self.name, self.labels, self.plugins, len(self.running))


class AgentRegistry:
    def __init__(self) -> None:
        self._sessions: dict[str, AgentSession] = {}

    def add(self, session: AgentSession) -> AgentSession | None:
        """Register a session; return the one it replaces, if any."""
        old = self._sessions.get(session.name)
        self._sessions[session.name] = session
        return old

    def remove(self, session: AgentSession) -> bool:
        """Forget a session unless a newer one for the same agent replaced it."""
        if self._sessions.get(session.name) is session:
            del self._sessions[session.name]
            return True
        return False

    def get(self, name: str) -> AgentSession | None:
        return self._sessions.get(name)

    def sessions(self) -> list[AgentSession]:
        return list(self._sessions.values())

    def views(self) -> list[AgentView]:
        return [
            session.view()
            for session in self._sessions.values()
            if not (session.draining or session.closed)
        ]
