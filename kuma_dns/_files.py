"""Reading files the agent may only trust when it wrote them itself, with nothing but `os`.

Shared by the persisted table (kuma_dns/table.py `read_table_file`) and the early responder's hot snapshot
and listen plan (kuma_dns/early.py), which runs before anything heavier than `os`/`socket` is imported.
Every check is made on the opened descriptor (O_NOFOLLOW, fstat), so the file cannot be swapped between the
check and the read: in a shared work dir another user could otherwise plant answers.
"""

from __future__ import annotations

import errno
import os
import stat


class FileRefused(ValueError):
    """The file is not one this agent may read (the message says why, as the rest of a sentence)."""


def read_checked(path: str | os.PathLike[str], private: bool, cap: int) -> bytes:
    """The bytes of a regular file of at most `cap` bytes. `private=True` adds: not a symlink, owned by this
    uid, not group/world-writable. Opened non-blocking, so a FIFO or a device is refused instead of blocking.
    Raises FileRefused naming what is wrong, or OSError (missing, unreadable)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if private else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if private and exc.errno == errno.ELOOP:
            raise FileRefused("it is a symbolic link, not a file this agent wrote") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "a directory"
                if stat.S_ISDIR(st.st_mode)
                else ("a device or socket")
            )
            raise FileRefused(f"it is {kind}, not a regular file")
        if private:
            if st.st_uid != os.geteuid():
                raise FileRefused(
                    f"it is owned by uid {st.st_uid}, not this agent's uid {os.geteuid()} "
                    "(another user's file)"
                )
            if st.st_mode & 0o022:
                raise FileRefused(f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")
        if st.st_size > cap:
            raise FileRefused(f"it has {st.st_size} bytes, more than the {cap}-byte limit")
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                raise FileRefused(f"it has more than the {cap}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
