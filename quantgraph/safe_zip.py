"""Inspect a zip archive before reading it: member names, sizes and compression ratios (no decompression).

Every archive quantgraph reads (``.pt2``, ``.qgn``, ``.npz``, zoo ``.pt``) is checked here first, so a
decompression bomb (a small file that inflates to gigabytes) or a member with a path outside the archive is
refused with one line before any byte is inflated. Python's ``zipfile`` stops reading a member at its declared
size and checks its CRC, so the sizes in the central directory bound what a later read can produce.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from quantgraph.errors import InputError

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class ZipLimits:
    """Size limits for one kind of archive."""

    max_total: int = 4 * GiB  # sum of the members' uncompressed sizes
    max_member: int = 4 * GiB
    max_ratio: float = 200.0  # uncompressed / compressed, for members above ``ratio_floor`` bytes
    ratio_floor: int = 4 * MiB
    max_members: int = 100_000


def inspect_zip(path: str | Path, what: str, limits: ZipLimits = ZipLimits()) -> list[zipfile.ZipInfo]:
    """The members of the zip at ``path``; InputError if it is not a zip or breaks ``limits``."""
    path = Path(path)
    fix = f"pass an intact {what}"
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as err:
        raise InputError(f"{path} is not a {what} (not a zip archive: {err})", fix) from None
    if len(infos) > limits.max_members:
        raise InputError(f"{path} has {len(infos)} archive members, more than {limits.max_members}", fix)
    total = 0
    for info in infos:
        name = info.filename
        if name.startswith(("/", "\\")) or ".." in Path(name).parts or "\0" in name:
            raise InputError(f"{path} has an archive member with an unsafe name {name[:80]!r}", fix)
        size = info.file_size
        total += size
        if size > limits.max_member or total > limits.max_total:
            raise InputError(
                f"{path} inflates to more than {min(limits.max_member, limits.max_total) // MiB} MiB "
                f"(member {name[:80]!r} is {size // MiB} MiB); refused as a possible decompression bomb",
                fix,
            )
        if size > limits.ratio_floor and size > limits.max_ratio * max(info.compress_size, 1):
            raise InputError(
                f"{path}: member {name[:80]!r} inflates {size / max(info.compress_size, 1):.0f}x "
                f"({info.compress_size} to {size} bytes); refused as a possible decompression bomb",
                fix,
            )
    return infos
