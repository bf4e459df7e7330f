"""Listing a dataset folder and reading its files, without ever being led outside it or stuck.

Only regular files are read. Every other entry is listed with the reason it is not read:

| entry | what happens |
| --- | --- |
| a regular file | read, up to `max_bytes` (a larger one is not read at all) |
| a symbolic link to a regular file inside the folder | read (its target) |
| a symbolic link leading outside the folder | reported, never opened |
| a dangling symbolic link, or a link to a folder | reported (folders behind links are not walked) |
| a FIFO, a socket, a device | reported, never opened (opening a FIFO waits for a writer forever) |

Entries are classified with `lstat`, which does not follow links (`Path.is_file` and `stat` do),
and the file is then opened with `O_NOFOLLOW | O_NONBLOCK` and checked again with `fstat`, so
an entry swapped for a link or a FIFO between the listing and the read is refused too.
Hidden entries (a name starting with a dot: `.DS_Store`, `.git`) are skipped.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

_KINDS = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


class FileRefused(OSError):
    """A dataset entry that is not read; the message says why."""


@dataclass(frozen=True)
class Entry:
    rel: str  # relative to the dataset folder, "/" separators
    target: str  # the path to open (a link's resolved target); empty when not to be read
    size: int
    mtime_ns: int
    problem: str | None = None  # why it is not read


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def classify(path: str, rel: str, root: str, max_bytes: int | None = None) -> Entry:
    """What one directory entry is, and whether (and where) it may be read."""
    st = os.lstat(path)
    target = path
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(path)
        if not os.path.exists(target):
            return Entry(rel, "", 0, st.st_mtime_ns, f"a dangling symbolic link (to {target}, which does not exist)")
        if not _inside(target, root):
            problem = f"a symbolic link to {target}, outside the dataset folder; not read"
            return Entry(rel, "", 0, st.st_mtime_ns, problem)
        st = os.stat(target)
        if not stat.S_ISREG(st.st_mode):
            return Entry(rel, "", 0, st.st_mtime_ns, f"a symbolic link to {_kind(st.st_mode)}; not read")
    elif not stat.S_ISREG(st.st_mode):
        return Entry(rel, "", 0, st.st_mtime_ns, f"{_kind(st.st_mode)}, not a regular file; not read")
    if max_bytes is not None and st.st_size > max_bytes:
        problem = f"{st.st_size:,} bytes, over the {max_bytes:,}-byte limit (validate.max_bytes); not read"
        return Entry(rel, "", st.st_size, st.st_mtime_ns, problem)
    return Entry(rel, target, st.st_size, st.st_mtime_ns)


def list_entries(raw: Path, max_bytes: int | None = None) -> list[Entry]:
    """Every non-hidden entry below `raw`, sorted by relative path; links to folders are not walked."""
    root = os.path.realpath(raw)
    entries = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = os.path.relpath(dirpath, root)
        prefix = "" if base == "." else base.replace(os.sep, "/") + "/"
        walked = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            full = os.path.join(dirpath, d)
            if os.path.islink(full):  # os.walk lists a link to a folder among the folders
                problem = f"a symbolic link to a folder ({os.path.realpath(full)}); not followed"
                entries.append(Entry(prefix + d, "", 0, os.lstat(full).st_mtime_ns, problem))
            else:
                walked.append(d)
        dirnames[:] = walked
        for f in filenames:
            if not f.startswith("."):
                entries.append(classify(os.path.join(dirpath, f), prefix + f, root, max_bytes))
    return sorted(entries, key=lambda e: e.rel)


def read_entry(entry: Entry, max_bytes: int) -> bytes:
    """The bytes of a readable entry; `FileRefused` when it is not (any longer) a regular file, or too big."""
    if entry.problem:
        raise FileRefused(entry.problem)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(entry.target, flags)
    except OSError as e:
        raise FileRefused(f"cannot open: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(f"{_kind(st.st_mode)}, not a regular file; not read")
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > max_bytes:
        raise FileRefused(f"over the {max_bytes:,}-byte limit (validate.max_bytes); not read in full")
    return b"".join(chunks)
