"""Reading a file a user or a shared artifact names, without letting it hang or fill memory.

Every reader of untrusted paths goes through :func:`open_regular` (a FIFO or a device in place of a file
would block ``open`` or stream forever; ``O_NONBLOCK`` makes the open return so the type can be checked)
and, for whole-file reads, :func:`read_bounded` (the size is checked before anything is read, and the
read stops one byte past the limit in case the file grows meanwhile). Errors are one line naming the file
and the cause; ``ENOSPC`` reads "no space left on the device" wherever :func:`os_reason` formats it.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO


class BoundedReadError(OSError):
    """A path that is not a regular file, is larger than its reader allows, or cannot be read; one line."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def os_reason(err: OSError) -> str:
    """The cause of an OSError in a few words (no path: the caller names the file)."""
    if err.errno == errno.ENOSPC:
        return "no space left on the device"
    if err.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return err.strerror or type(err).__name__


def check_regular(path: str | Path) -> os.stat_result:
    """``stat`` of ``path`` if it is a regular file (symlinks followed); else a one-line BoundedReadError."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise BoundedReadError(f"{path}: {os_reason(err)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BoundedReadError(f"{path}: refused: {_kind(st.st_mode)}, not a regular file")
    return st


def open_regular(path: str | Path) -> BinaryIO:
    """Open ``path`` for binary reading only if it is a regular file.

    The type is checked on the opened descriptor (``fstat``), not only before opening, so a FIFO swapped in
    between the two cannot block: ``O_NONBLOCK`` lets ``open`` of a FIFO return at once."""
    check_regular(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise BoundedReadError(f"{path}: {os_reason(err)}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise BoundedReadError(f"{path}: refused: {_kind(mode)}, not a regular file")
    os.set_blocking(fd, True)  # regular files never block; the flag only mattered for the open itself
    return os.fdopen(fd, "rb")


def read_bounded(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of regular file ``path``, refused in one line when it holds more than ``limit`` bytes."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise BoundedReadError(f"{path}: {what} of {size} bytes is over the {limit}-byte limit")
        try:
            data = f.read(limit + 1)
        except OSError as err:
            raise BoundedReadError(f"{path}: {os_reason(err)}") from None
    if len(data) > limit:  # grew after the stat
        raise BoundedReadError(f"{path}: {what} is over the {limit}-byte limit")
    return data


def read_zip_member(zf, name: str, limit: int, source: str | Path) -> bytes:
    """One member of an open ``zipfile.ZipFile``, refused when it inflates past ``limit`` bytes.

    The declared size is checked before anything is inflated; the read itself stops one byte past the limit,
    so a member whose header lies about its size cannot inflate further either."""
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise BoundedReadError(f"{source}: member {name} inflates to {info.file_size} bytes, over the "
                               f"{limit}-byte limit")
    with zf.open(info) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise BoundedReadError(f"{source}: member {name} inflates past the {limit}-byte limit "
                               f"(its header declared {info.file_size})")
    return data
