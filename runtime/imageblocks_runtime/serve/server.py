"""uvicorn for the service: a deadline for request headers, the allowed `Host` names, logging.

uvicorn times out idle keep-alive connections but not one that never finishes its request's
headers: an idle socket or a client sending a header line every few seconds stays open for good.
`HeaderTimeoutH11` closes a connection whose next request's headers are not complete
`header_timeout` seconds after the connection opened or the previous answer went out. The
number of open connections is not limited (uvicorn's `limit_concurrency` counts them, so idle
sockets made every request a 503); the app bounds the requests in progress instead.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

import h11
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("imageblocks.serve")

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
ANY_ADDRESS = ("0.0.0.0", "::", "")


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers are late."""

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request's headers."""
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        """Feed h11; stop the clock once a request's headers are complete."""
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        """Start the clock for the next request's headers."""
        super().on_response_complete()
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock."""
        self._stop_header_timer()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if not waiting:
            self._stop_header_timer()
        elif self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.debug("closing %s: no complete request within %g s", client, self.header_timeout)
            self.transport.close()


def h11_protocol(header_timeout: float) -> type[HeaderTimeoutH11]:
    """`HeaderTimeoutH11` with this header deadline (uvicorn builds one per connection)."""
    if header_timeout <= 0:
        raise ValueError(f"header_timeout must be positive, got {header_timeout}")
    return type("HeaderTimeoutH11", (HeaderTimeoutH11,), {"header_timeout": header_timeout})


def _host_name(name: str) -> str:
    """A `Host` header's name as compared: lower case, IPv6 addresses in brackets."""
    name = name.strip().lower()
    try:
        if ipaddress.ip_address(name.strip("[]")).version == 6:
            return f"[{name.strip('[]')}]"
    except ValueError:
        pass
    return name


def allowed_hosts_for(host: str, extra: Sequence[str] = ()) -> list[str] | None:
    """The `Host` names a server bound to `host` answers (any port); None: any name.

    Loopback addresses allow 127.0.0.1, localhost and [::1]; another address allows itself; the
    any-address (0.0.0.0, ::) allows any name unless `extra` names some. `extra` (the CLI's
    `--allowed-host`) is added; "*" in it allows any name. Refusing other names keeps a web page
    on another site from reaching the service through DNS rebinding.
    """
    names = [_host_name(n) for n in extra]
    if "*" in names:
        return None
    bound = _host_name(host)
    if bound.strip("[]") not in ANY_ADDRESS:
        try:
            loopback = ipaddress.ip_address(bound.strip("[]")).is_loopback
        except ValueError:
            loopback = bound == "localhost"
        names = [*(LOOPBACK_NAMES if loopback else (bound,)), *names]
    return list(dict.fromkeys(names)) or None


def log_config() -> dict[str, Any]:
    """uvicorn's logging setup, with the service's own lines (`imageblocks.serve`) shown too."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["imageblocks.serve"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    return config


def uvicorn_config(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    header_timeout: float = 10.0,
    **uvicorn_kw: Any,
) -> uvicorn.Config:
    """A uvicorn configuration for `app`: h11 with the header deadline, the service's logging."""
    uvicorn_kw.setdefault("log_config", log_config())
    return uvicorn.Config(
        app, host=host, port=port, http=h11_protocol(header_timeout), **uvicorn_kw
    )
