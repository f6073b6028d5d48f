"""Carrying the protocol over stdio and TCP.

Both read with `framing.FrameParser`, so a malformed frame gets a parse error and the stream
resynchronises. Over TCP every connection is its own session (its own server: documents,
settings, model, statistics), a client's disconnect or `exit` ends only that session, and the
server keeps listening. One session at a time is served: an `initialize` while another client's
session is active is refused with an error saying so. `initialize` must carry the shared secret
from the token file (readable only by its owner) in `initializationOptions.token`: a loopback
port is open to every account on the machine.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
import threading
from pathlib import Path
from typing import Awaitable, Callable

from codeparrot_ls.framing import MAX_BODY, FrameParser

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
# A body still short of its Content-Length after this pause is checked for being a whole
# message (a declared length too large): the client may be waiting for the answer.
PAUSE_S = 1.0
PREAUTH_MAX_BODY = 1024 * 1024     # before a TCP client is admitted, frames stay small
PREAUTH_TIMEOUT_S = 30.0           # a TCP connection that sends no accepted initialize is closed
MAX_PENDING = 8                    # TCP connections not yet admitted
TOKEN_OPTION = "token"
_TOKEN_TEXT = re.compile(r"[0-9a-f]{64}")


async def run_session(server, read: Callable[[], Awaitable[bytes]], max_body: int | None = None) -> None:
    """Feed `read()`'s bytes to `server` until end of input or until the session ends."""
    protocol = server.protocol
    parser = FrameParser()
    while protocol.exit_code is None:
        if max_body is not None:
            parser.max_body = MAX_BODY if protocol.initialize_seen else max_body
        if parser.waiting_for_body():
            try:
                data = await asyncio.wait_for(read(), PAUSE_S)
            except asyncio.TimeoutError:
                for event in parser.stale():
                    protocol.receive(event)
                continue
        else:
            data = await read()
        if not data:
            break
        for event in parser.feed(data):
            protocol.receive(event)
            if protocol.exit_code is not None:
                break
            # Let the message's handler start before the next message is handled (an async
            # didChangeConfiguration must apply before a request right behind it).
            await asyncio.sleep(0)


# -- stdio ------------------------------------------------------------------------------------------
class _StdinReader:
    """stdin read on a daemon thread (a blocked read must not keep the process alive after `exit`),
    from the file descriptor: a daemon thread inside a buffered reader's lock aborts the
    interpreter's shutdown."""

    def __init__(self, stdin, loop: asyncio.AbstractEventLoop) -> None:
        try:
            fd = stdin.fileno()
            self._read = lambda n: os.read(fd, n)           # what has arrived, up to n bytes
        except (AttributeError, OSError, ValueError):
            self._read = getattr(stdin, "read1", stdin.read)
        self._loop = loop
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)
        threading.Thread(target=self._pump, name="codeparrot-stdin", daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                data = self._read(CHUNK)
            except (OSError, ValueError):
                data = b""
            try:
                asyncio.run_coroutine_threadsafe(self._queue.put(data), self._loop).result()
            except RuntimeError:            # the loop is closed: the session is over
                return
            if not data:
                return

    async def __call__(self) -> bytes:
        return await self._queue.get()


def serve_stdio(server, stdin, stdout) -> int:
    """Serve one session on stdin/stdout; the exit code is LSP's (1 for `exit` without `shutdown`)."""
    from pygls.io_ import StdoutWriter

    server.protocol.set_writer(StdoutWriter(stdout))

    async def main() -> None:
        try:
            await run_session(server, _StdinReader(stdin, asyncio.get_running_loop()))
        except BrokenPipeError:
            log.error("the client closed stdout: ending")
        finally:
            server.end_session()

    asyncio.run(main())
    return server.protocol.exit_code or 0


# -- TCP --------------------------------------------------------------------------------------------
class _Discard:
    """The writer of a session whose connection is gone: late answers go nowhere."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class TcpServer:
    """Sessions for TCP connections, one active at a time, each its own server object."""

    def __init__(self, new_server: Callable[[], object], start_session: Callable[[object], None], token: str):
        self.new_server, self.start_session, self.token = new_server, start_session, token
        self.active = None                  # the admitted session's server
        self.pending = 0

    def serve(self, host: str, port: int, ready: Callable[[list], None] | None = None) -> None:
        async def main() -> None:
            listener = await asyncio.start_server(self.connection, host, port)
            addresses = [s.getsockname() for s in listener.sockets]
            log.info("listening on %s", ", ".join(f"{a[0]}:{a[1]}" for a in addresses))
            if ready is not None:
                ready(addresses)
            async with listener:
                await listener.serve_forever()

        asyncio.run(main())

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self.pending >= MAX_PENDING:
            log.warning("connection from %s closed: %d others are not yet admitted", peer, self.pending)
            writer.close()
            return
        server = self.new_server()
        server.protocol.set_writer(writer)
        server.protocol.admit = lambda params: self.admit(server, params)
        self.pending += 1
        timer = asyncio.get_running_loop().call_later(
            PREAUTH_TIMEOUT_S, lambda: None if server.protocol.initialize_seen else writer.transport.abort())
        log.info("connection from %s", peer)
        try:
            await run_session(server, lambda: reader.read(CHUNK), max_body=PREAUTH_MAX_BODY)
        except ConnectionError as exc:
            log.info("connection from %s lost: %s", peer, exc)
        finally:
            timer.cancel()
            if not server.protocol.initialize_seen:
                self.pending -= 1
            server.protocol.set_writer(_Discard())
            # Waiting for the decoder to stop takes at most one token; off the loop all the same.
            await asyncio.get_running_loop().run_in_executor(None, server.end_session)
            if self.active is server:
                self.active = None
            writer.close()                  # last: once the client sees it, the next may come
            log.info("session of %s ended", peer)

    def admit(self, server, params) -> str | None:
        """`initialize` of a new connection: the token must match and no other session be active."""
        given = None
        # Flat or under `codeparrot`, like the settings; removed so that nothing logs it.
        from codeparrot_ls.settings import SECTION as SETTINGS_SECTION

        for options in (params.initialization_options, _get(params.initialization_options, SETTINGS_SECTION)):
            if isinstance(options, dict) and TOKEN_OPTION in options:
                given = options.pop(TOKEN_OPTION)
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self.token.encode()):
            return ("codeparrot-ls over TCP needs initializationOptions.token: the contents of the "
                    "server's token file (see --token-file)")
        if self.active is not None:
            return "codeparrot-ls is serving another client; close that one or start another server on another port"
        self.pending -= 1
        self.active = server
        self.start_session(server)
        return None


def _get(options, key: str):
    return options.get(key) if isinstance(options, dict) else None


# -- the shared secret and the address --------------------------------------------------------------
def default_token_file() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime and Path(runtime).is_dir() else Path.home() / ".cache"
    return base / "codeparrot-ls" / "token"


def ensure_token(path: Path) -> str:
    """The token in `path`, made (mode 0600) when missing, unreadable by others or not a token."""
    try:
        st = path.stat()
        text = path.read_text(encoding="ascii").strip()
        if st.st_mode & 0o077 == 0 and st.st_uid == getattr(os, "getuid", lambda: st.st_uid)() and _TOKEN_TEXT.fullmatch(text):
            return text
        log.warning("%s is readable by others or holds no token: writing a new one", path)
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)
    return token


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one (False when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)
