"""ASGI middleware: a deadline for each request body, and a lingering read before an early answer.

A client that sends its whole body before it reads the answer (Python's urllib, `requests`, a
browser form) sees "connection reset by peer" instead of a 413 or 503 when the server closes the
socket with part of the body unread: the kernel answers unread data with a reset. So when the
app answers while the body is still arriving, the rest of it is first read and thrown away when
its declared Content-Length leaves at most `linger_bytes` to read, no later than the body's
deadline; otherwise (or if it does not end by then) the answer goes out with
`Connection: close`. A chunked body of unknown length is not read further. A client that sent
`Expect: 100-continue` and has not been told to go on gets the answer at once and sends nothing.

A body that has not fully arrived `body_timeout` seconds after its request's headers raises
`BodyTimeout` from `receive()`: the app answers 408 and the connection is closed, so a client
sending one byte every few seconds holds a request slot for a bounded time only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imageblocks_runtime.errors import ImageblocksError

MB = 1024 * 1024
LINGER_BYTES = 256 * MB  # the most of an unwanted body read (and discarded) to answer readably
CLOSE = (b"connection", b"close")


class BodyTimeout(ImageblocksError):
    """The request body did not arrive within the deadline."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request body did not arrive within {seconds:g} s")
        self.seconds = seconds


@dataclass
class _Body:
    """What has been seen of one request's body."""

    received: int = 0
    asked: bool = False  # the app called receive() (uvicorn then sends 100 Continue)
    ended: bool = False
    disconnected: bool = False
    timed_out: bool = False

    def track(self, message: Message) -> None:
        """Count one message from the client."""
        if message["type"] == "http.disconnect":
            self.disconnected = True
        else:
            self.received += len(message.get("body", b""))
            self.ended = not message.get("more_body", False)

    @property
    def over(self) -> bool:
        """No more of the body will come."""
        return self.ended or self.disconnected


def _declared_body(headers: list[tuple[bytes, bytes]]) -> tuple[bool, int | None]:
    """(the request has a body, its declared length or None when chunked or invalid)."""
    length, chunked = None, False
    for name, value in headers:
        if name == b"transfer-encoding":
            chunked = True
        elif name == b"content-length" and value.strip().isdigit():
            length = int(value)
    return chunked or bool(length), None if chunked else length


class BodyGuard:
    """Deadline for request bodies and lingering read before early answers (see the module)."""

    def __init__(
        self, app: ASGIApp, body_timeout: float = 60.0, linger_bytes: int = LINGER_BYTES
    ) -> None:
        if body_timeout <= 0 or linger_bytes < 0:
            raise ValueError("body_timeout must be positive and linger_bytes not negative")
        self.app, self.body_timeout, self.linger_bytes = app, body_timeout, linger_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a guarded `receive` and `send`."""
        has_body, length = (
            _declared_body(scope["headers"]) if scope["type"] == "http" else (False, None)
        )
        if not has_body:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        body = _Body()
        expects_continue = (b"expect", b"100-continue") in [
            (k, v.lower()) for k, v in scope["headers"]
        ]

        async def read(timeout: float) -> Message:
            message = await asyncio.wait_for(receive(), max(timeout, 0.0))
            body.track(message)
            return message

        async def guarded_receive() -> Message:
            if body.over:  # after the body: e.g. waiting for the client to go away
                return await receive()
            body.asked = True
            try:
                return await read(deadline - loop.time())
            except TimeoutError:
                body.timed_out = True
                raise BodyTimeout(self.body_timeout) from None

        async def linger() -> bool:
            """Read and discard the rest of the body; True when it ended."""
            if length is None or length - body.received > self.linger_bytes:
                return False
            while not body.over:
                try:
                    await read(deadline - loop.time())
                except TimeoutError:
                    return False
            return body.ended

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not body.over:
                skip = body.timed_out or (expects_continue and not body.asked)
                if skip or not await linger():
                    message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)
