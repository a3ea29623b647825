"""Output files: written whole or not at all, all outputs of a command together, with the user's permissions.

- Each file is written to an unnamed temporary file in the target's folder (Linux ``O_TMPFILE``), which
  the kernel frees if the process dies, then linked under a temporary name and renamed over the target.
  Where ``O_TMPFILE`` is unsupported, a named temporary file is used instead.
- Temporary names carry the writer's process id (``.NAME.PID.RANDOM.qgtmp``); a temporary whose writer
  is gone (killed between link and rename, or on a file system without ``O_TMPFILE``) is removed by the
  next write into that folder.
- Inside ``output_transaction()`` nothing is renamed until the block succeeds; then every output is put
  in place, and if one rename fails the ones already made are undone.
- Files are created with mode ``0o666`` minus the umask, like ``open(path, "w")``.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".qgtmp"
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + r"$")


@dataclass
class _Staged:
    """One written output waiting for its rename: an open ``O_TMPFILE`` fd, or a named temp file."""

    target: Path
    fd: int | None = None
    temp: Path | None = None

    def discard(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        if self.temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.temp)
            self.temp = None

    def publish(self) -> None:
        """Give the data a name (if it has none yet) and rename it over the target."""
        if self.temp is None:
            assert self.fd is not None
            temp = _temp_path(self.target)
            folder = os.open(temp.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:  # a dir fd makes Python call linkat(..., AT_SYMLINK_FOLLOW), which links the open file
                os.link(f"/proc/self/fd/{self.fd}", temp.name, dst_dir_fd=folder, follow_symlinks=True)
            finally:
                os.close(folder)
            self.temp = temp
            os.close(self.fd)
            self.fd = None
        os.replace(self.temp, self.target)
        self.temp = None


@dataclass
class OutputTransaction:
    """Outputs staged by the writes inside ``output_transaction()``; renamed into place together."""

    staged: list[_Staged] = field(default_factory=list)

    def commit(self) -> None:
        backups: list[tuple[Path, Path | None]] = []  # (target, hard link to its old content or None)
        try:
            for item in self.staged:
                backup = None
                if item.target.is_file():
                    backup = _temp_path(item.target)
                    os.link(item.target, backup)
                backups.append((item.target, backup))
                item.publish()
        except BaseException:
            for target, backup in reversed(backups):
                with contextlib.suppress(OSError):
                    if backup is not None:
                        os.replace(backup, target)
                    else:
                        os.unlink(target)
            self.abort()
            raise
        for _target, backup in backups:
            if backup is not None:
                with contextlib.suppress(OSError):
                    os.unlink(backup)
        self.staged.clear()

    def abort(self) -> None:
        for item in self.staged:
            item.discard()
        self.staged.clear()


_ACTIVE: contextvars.ContextVar[OutputTransaction | None] = contextvars.ContextVar(
    "quantgraph_output_transaction", default=None
)


@contextlib.contextmanager
def output_transaction() -> Iterator[OutputTransaction]:
    """All files written by ``atomic_file`` inside the block appear together when it ends, or none do."""
    if _ACTIVE.get() is not None:  # nested: the outer transaction decides
        yield _ACTIVE.get()  # type: ignore[misc]
        return
    tx = OutputTransaction()
    token = _ACTIVE.set(tx)
    try:
        yield tx
    except BaseException:
        tx.abort()
        raise
    finally:
        _ACTIVE.reset(token)
    tx.commit()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file object whose content replaces ``path`` only once the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
    if target.exists() and not target.is_file():  # never rename over a device, pipe or socket
        raise FileExistsError(errno.EEXIST, "exists and is not a regular file", str(target))
    clean_stale_temps(target.parent)
    staged = _open_staged(target)
    fd = staged.fd if staged.fd is not None else os.open(staged.temp, os.O_WRONLY)
    try:
        with os.fdopen(os.dup(fd), "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        if staged.fd is None:
            os.close(fd)
        staged.discard()
        raise
    if staged.fd is None:
        os.close(fd)
    tx = _ACTIVE.get()
    if tx is not None:
        tx.staged.append(staged)
        return
    try:
        staged.publish()
    except BaseException:
        staged.discard()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(payload)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_default) + "\n").encode())


def clean_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove our temporary files in ``folder`` whose writing process no longer runs; returns them."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        found = _TEMP_NAME.match(entry.name)
        if found and not _process_alive(int(found.group(1))) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same file (existing: same inode; otherwise the same resolved path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _open_staged(target: Path) -> _Staged:
    mode = 0o666  # the umask applies, as for open(path, "w")
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        try:
            return _Staged(target, fd=os.open(target.parent, flag | os.O_WRONLY, mode))
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
    temp = _temp_path(target)
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    return _Staged(target, temp=temp)


def _temp_path(target: Path) -> Path:
    return target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
