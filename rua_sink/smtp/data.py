"""DATA as it arrives: the reader of the DATA transfer (RFC 5321 4.1.1.4, 4.5.2) and the
spool it writes to.

aiosmtpd's own DATA handling keeps the whole message in memory (about three times its
size); ``read_data`` hands the data on in blocks as they arrive, to a ``Spool`` (memory,
then a temporary file without a name), so a session's memory does not grow with the
message.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO

import aiofiles.threadpool
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from rua_sink import logs

log = logs.get("rua_sink.smtp")


@dataclass
class SpooledMessage:
    file: IO[bytes]
    size: int


#: The name that spool files of earlier versions (and of a crash inside
#: ``tempfile.TemporaryFile``'s fallback, between creating and unlinking) start with.
SPOOL_PREFIX = "rua-sink-data-"


class Spool:
    """DATA as it arrives: in memory up to ``memory`` bytes, then in a temporary file
    written through aiofiles (in a worker thread), so that disk writes never hold up the
    event loop.

    The file has no name (``tempfile.TemporaryFile``: O_TMPFILE, or unlinked as soon as
    created), so it cannot outlive its session: the kernel frees it when it is closed,
    whether by ``close`` at the end of DATA, by a cancellation of the session's task (the
    file object is then closed when collected) or by the death of the process."""

    def __init__(self, memory: int) -> None:
        self.memory = memory
        self._buffer = io.BytesIO()
        self._file: IO[bytes] | None = None  # once the data outgrows memory
        self._writer: AsyncBufferedIOBase | None = None  # the same file, written async

    async def write(self, data: bytes) -> None:
        if self._file is None:
            if self._buffer.tell() + len(data) <= self.memory:
                self._buffer.write(data)
                return
            self._file = tempfile.TemporaryFile(prefix=SPOOL_PREFIX)  # noqa: SIM115 - see close()
            self._writer = aiofiles.threadpool.wrap(self._file)
            data = self._buffer.getvalue() + data
            self._buffer = io.BytesIO()
        assert self._writer is not None
        await self._writer.write(data)

    async def reader(self) -> IO[bytes]:
        """The data, from its start, as a file the (synchronous) parser can read."""
        file, writer = self._file, self._writer
        if file is None or writer is None:
            self._buffer.seek(0)
            return self._buffer
        await writer.flush()
        file.seek(0)
        return file

    def close(self) -> None:
        """Frees the data; synchronous, so that nothing (a cancellation) can stop it half
        way."""
        file, self._file, self._writer = self._file, None, None
        if file is not None:
            with contextlib.suppress(OSError):  # what is left to flush may not fit either
                file.close()
        self._buffer = io.BytesIO()


def remove_stale_spools() -> int:
    """Removes the spool files that earlier runs left in the temporary folder (the named
    files of older versions, killed or cut off before they removed them); returns how
    many. Called at start, once the SMTP port is ours."""
    try:
        with os.scandir(tempfile.gettempdir()) as entries:
            stale = [
                e.path
                for e in entries
                if e.name.startswith(SPOOL_PREFIX) and e.is_file(follow_symlinks=False)
            ]
    except OSError:
        return 0
    removed = 0
    for path in stale:
        try:
            os.unlink(path)
        except OSError:
            continue
        removed += 1
    return removed


_END = b".\r\n"
_FLUSH_BYTES = 65536
#: A bare LF, not the end of a CRLF: the line ends there all the same (see read_data).
_BARE_LF = re.compile(rb"(?<!\r)\n")


def _over(lines: list[bytes], limit: int) -> bool:
    """Whether one of ``lines`` (split at LF) is longer than ``limit``, a CR before its LF
    not counted."""
    longest = max(map(len, lines))
    if longest <= limit:
        return False
    return longest > limit + 1 or any(
        len(line) == longest and not line.endswith(b"\r") for line in lines
    )


async def read_data(
    reader: asyncio.StreamReader,
    write: Callable[[bytes], Awaitable[None]],
    *,
    line_limit: int,
    size_limit: int | None,
    carry_limit: int = _FLUSH_BYTES,
) -> tuple[int, str]:
    """Read DATA from ``reader`` up to its end (a line holding only a dot, RFC 5321
    4.1.1.4), undo dot-stuffing (4.5.2) and hand the content to ``write``. Returns the
    size (the bytes before the final dot line, as received) and "ok", "too_much" (over
    ``size_limit``; nothing more is written), "no_storage" (``write`` failed; nothing more
    is written either) or "too_long" (a line longer than ``line_limit``, its end not
    counted). Whatever the state, the data is read to its end, so that none of it is
    taken for commands.

    Lines end at CRLF or at a bare LF, which is taken for a CRLF (as Postfix does by
    default): it ends the line for the length check, the line after it is unstuffed, and
    it is handed on as CRLF, so that such a message is stored like its CRLF twin. The
    data itself ends only at CRLF.CRLF: a bare LF or CR around the dot (LF.LF, CR.LF,
    LF.CRLF, CRLF.CR) does not end it, so no second message can hide behind such an end
    (the SMTP smuggling attacks of 2023). Whatever follows the final dot (pipelined
    commands, RFC 2920) stays in ``reader``.

    The data is read in blocks, not lines: each ``readuntil`` stops at the next ".CRLF",
    or, when that is further off than the reader's limit, gives way to a read of the bytes
    before it (which never end inside a ".CRLF"). An unfinished line is held back to the
    next block, up to ``carry_limit`` bytes; past that, all of it but its last byte (a CR
    may start the CRLF) is handed on and only its length is kept, so a session's memory
    does not grow with ``line_limit``.
    """
    data = _Transfer(line_limit, size_limit, carry_limit)
    while True:
        try:
            chunk = await reader.readuntil(_END)
            at_dot = True
        except asyncio.LimitOverrunError as e:
            chunk = await reader.read(e.consumed)  # no ".CRLF" starts in these bytes
            at_dot = False
        done = data.take(chunk, at_dot=at_dot)
        if data.pending and (done or data.pending_bytes >= _FLUSH_BYTES):
            await data.flush(write)
        if done:
            return data.size, data.state()


class _Transfer:
    """One DATA transfer, block by block (see ``read_data``)."""

    __slots__ = (
        "after_crlf",
        "carry",
        "carry_limit",
        "line_len",
        "line_limit",
        "no_storage",
        "pending",
        "pending_bytes",
        "size",
        "size_limit",
        "too_long",
        "too_much",
    )

    def __init__(self, line_limit: int, size_limit: int | None, carry_limit: int) -> None:
        self.line_limit = line_limit
        self.size_limit = size_limit
        self.carry_limit = carry_limit
        self.size = 0
        self.too_long = self.no_storage = self.too_much = False
        #: the current line's bytes not handed on yet: all of them, or its last one
        self.carry = b""
        self.line_len = 0  # the current line's bytes handed on before ``carry``
        self.after_crlf = True  # the line in ``carry`` follows a CRLF (at first: DATA's own)
        self.pending: list[bytes] = []  # unstuffed, to be written
        self.pending_bytes = 0

    def take(self, chunk: bytes, *, at_dot: bool) -> bool:
        """Takes the next block (``at_dot``: it ends in ".CRLF"); returns whether it ends
        the data."""
        self.size += len(chunk)
        data = self.carry + chunk if self.carry else chunk
        if at_dot and (
            data.endswith(b"\r\n.\r\n") or (data == _END and self.after_crlf and not self.line_len)
        ):
            body, self.carry, done = data[:-3], b"", True
            self.size -= 3
        else:
            cut = data.rfind(b"\n") + 1
            body, self.carry, done = data[:cut], data[cut:], False
        at_line_start = not self.line_len
        self._check_lines(body)
        piece = self._hand_on_carry()
        if self.size_limit and self.size > self.size_limit:
            self.too_much = True
        if self.too_long or self.no_storage or self.too_much:
            self.pending.clear()  # the message is refused: keep reading, store nothing
        else:
            self._keep(body, piece, at_line_start=at_line_start)
        return done

    def _check_lines(self, body: bytes) -> None:
        """The line limit, over the whole lines in ``body`` and the line in ``carry``."""
        limit = self.line_limit
        if body and not self.too_long:
            end = body.find(b"\n")  # of the first line, which may have begun before
            first = self.line_len + end - (body[end - 1 : end] == b"\r")
            self.too_long = first > limit or (
                len(body) > limit + 1 and _over(body.split(b"\n"), limit)
            )
        if body:
            self.line_len = 0
            self.after_crlf = body.endswith(b"\r\n")
        if self.line_len + len(self.carry) - self.carry.endswith(b"\r") > limit:
            self.too_long = True

    def _hand_on_carry(self) -> bytes:
        """The part of an unfinished line that is not held back any longer."""
        carry = self.carry
        if len(carry) > self.carry_limit or (self.too_long and carry):
            piece, self.carry = carry[:-1], carry[-1:]
            self.line_len += len(piece)
            return piece
        return b""

    def _keep(self, body: bytes, piece: bytes, *, at_line_start: bool) -> None:
        """Unstuffs ``body`` (whole lines) and ``piece`` (of a line) to be written."""
        if body:
            if at_line_start and body.startswith(b"."):
                body = body[1:]
            if body.count(b"\n") != body.count(b"\r\n"):
                body = _BARE_LF.sub(b"\r\n", body)
            self.pending.append(body.replace(b"\r\n.", b"\r\n"))
            self.pending_bytes += len(body)
        if piece:
            if not self.line_len - len(piece) and piece.startswith(b"."):
                piece = piece[1:]  # the line starts with this piece
            self.pending.append(piece)
            self.pending_bytes += len(piece)

    async def flush(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        try:
            await write(b"".join(self.pending))
        except OSError as exc:  # a full disk, a file size limit
            log.error("spool_write_failed", error=str(exc))
            self.no_storage = True
        self.pending.clear()
        self.pending_bytes = 0

    def state(self) -> str:
        if self.too_much:
            return "too_much"
        if self.no_storage:
            return "no_storage"
        return "too_long" if self.too_long else "ok"
