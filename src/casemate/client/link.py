"""The DB-API connection's hold on its :class:`~.blocking.Channel`.

:class:`BlockingLink` is what :class:`casemate.dbapi.Connection` stands on: it sends
requests on the channel and waits for their replies, keeps the notices (across
reconnections), and when the server closed an idle connection, reports a lost
transaction or else opens a new channel (``reconnect_attempts``, with a backoff),
bumping ``generation`` so that cursors know their open results died with the old
one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import Codes, InterfaceError, OperationalError
from ..protocol import Msg
from .blocking import Channel, open_channel
from .core import Request, SimpleRequest
from .params import ConnectParams

__all__ = ["BlockingLink"]


class BlockingLink:
    """The channel under a :class:`~casemate.dbapi.Connection` (``None`` once closed),
    the requests sent on it, and its replacement after the server dropped it."""

    def __init__(self, params: ConnectParams) -> None:
        self.params = params
        self._chan: Channel | None = open_channel(params)
        self.on_notice: Callable[[str, str], None] | None = None
        self._notices: list[tuple[str, str]] = []
        self._chan.core.on_notice = self._notice
        self.generation = 0  # bumped at each automatic reconnection

    def _notice(self, code: str, text: str) -> None:
        self._notices.append((code, text))
        del self._notices[:-100]  # bounded: the last 100, kept across reconnections
        if self.on_notice is not None:
            self.on_notice(code, text)

    @property
    def _channel(self) -> Channel:
        if self._chan is None:
            raise InterfaceError("connection is closed")
        return self._chan

    def _send(self, req: Request, msg: Msg, body: Any) -> None:
        chan = self._channel
        if chan.broken is not None and chan.core.pending:
            raise chan.broken  # lost with a request in flight: as reported (nothing queued)
        if not chan.core.pending and not chan.poll_alive():
            if msg is Msg.FETCH:  # its result died with the link: no reconnecting for it
                assert chan.broken is not None  # (and a lost transaction stays to report)
                raise chan.broken
            chan = self._recover(chan)
        chan.send(chan.core.request(req, msg, body))

    def _recover(self, chan: Channel) -> Channel:
        """The idle connection is gone: report a lost transaction, else reconnect."""
        assert chan.broken is not None
        chan.core.fail_pending(chan.broken)
        if chan.core.in_transaction:
            chan.core.in_transaction = False  # reported once; the next call reconnects
            raise chan.broken
        if self.params.reconnect_attempts <= 0:
            raise chan.broken
        delay = self.params.reconnect_delay
        for attempt in range(self.params.reconnect_attempts):
            try:
                new = open_channel(self.params)
            except OperationalError as e:
                if e.code != Codes.CANNOT_CONNECT or attempt + 1 == self.params.reconnect_attempts:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            new.core.on_notice = self._notice
            self._chan = new
            self.generation += 1
            return new
        raise chan.broken

    def _wait(self, req: Request) -> None:
        chan = self._channel
        while not req.done:
            chan.read_messages()
        if req.error is not None:
            raise req.error

    def _simple(self, msg: Msg, body: Any = None) -> SimpleRequest:
        req = SimpleRequest()
        self._send(req, msg, body)
        self._wait(req)
        return req

    def __del__(self) -> None:
        if getattr(self, "_chan", None) is not None:
            self._chan.close()  # type: ignore[union-attr]
