"""What the intercept's hooks use of a relay session, for unit tests that run without a relay."""

from __future__ import annotations

from replicate.pgwire import messages as m
from replicate.runtime import intercept


class FakeSession:
    """The attributes ``ReplicateHooks`` reads and writes; ``forwarded`` does what the relay
    does when it forwards a message."""

    def __init__(self, *, in_batch: bool = False, parameters: dict | None = None) -> None:
        self.extra: dict = {}
        self.parameters = dict(parameters or {})
        self.encoding = "utf-8"
        self.executions = 0
        self.in_batch = in_batch
        self.hooked = intercept._ALL
        self.transaction_status = "I"

    def peek_frames(self, n: int) -> list[bytes]:
        return []

    def forwarded(self, message) -> None:
        """The relay's book-keeping for a forwarded message (``Session._forwarded``,
        ``in_batch``)."""
        if type(message) in (m.Query, m.Execute):
            self.executions += 1
        if type(message) in (m.Parse, m.Bind, m.Describe, m.Execute, m.Close):
            self.in_batch = True
        elif type(message) is m.Sync:
            self.in_batch = False
