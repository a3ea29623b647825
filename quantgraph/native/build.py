"""JIT build of ``kernels.c``: compiled once per source, flags, compiler and CPU, cached, loaded with ctypes.

The shared library lives in ``$QUANTGRAPH_CACHE/native`` (default ``~/.cache/quantgraph/native``) as
``<hash>.so``; it is written to a temporary file and renamed, so concurrent builds never see a partial file.
Flags are tried from fastest to most portable: ``-O3 -march=native -fopenmp``, then without ``-march=native``,
then without OpenMP, then plain ``-O3``. Compilers: ``$CC`` first, then ``cc``, ``gcc`` and ``clang`` on PATH
when it is missing or cannot build the kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from quantgraph.checksum import file_sha256
from quantgraph.errors import EnvironmentFailure, InputError

SOURCE = Path(__file__).with_name("kernels.c")
ABI_VERSION = 4
BASE_FLAGS = ["-std=c99", "-O3", "-shared", "-fPIC"]
FLAG_SETS = [
    ["-march=native", "-fopenmp"],
    ["-fopenmp"],
    ["-march=native"],
    [],
]
#: $QUANTGRAPH_NATIVE_ISA: the instruction set the kernels are built for (default native). ``avx2`` and
#: ``portable`` build the AVX2 and plain-C paths, e.g. to test them on an AVX-512 machine.
ISA_FLAG_SETS = {
    "native": None,  # FLAG_SETS
    "avx2": [["-march=haswell", "-fopenmp"], ["-march=haswell"]],
    "portable": [["-fopenmp"], []],
}
NO_COMPILER = ("no C compiler found", "install gcc (apt install build-essential) or set CC")
#: $QUANTGRAPH_NATIVE_STRICT=1: a build that had to drop flags of the ISA level's first (fastest) flag set is
#: an error instead of a warning (for benchmarks and deployments that must not run the slow kernels).
STRICT_ENV = "QUANTGRAPH_NATIVE_STRICT"


class NativeFallbackWarning(UserWarning):
    """The kernels were built without some of the fastest flags (e.g. no ``-march=native`` or OpenMP)."""


_lock = threading.Lock()
_loaded: dict[str, NativeLib] = {}  # per ISA


@dataclass(frozen=True)
class NativeLib:
    """A loaded kernels library and what it was built with."""

    lib: ctypes.CDLL
    path: Path
    flags: tuple[str, ...]
    openmp: bool
    vnni: bool
    default_threads: int
    compiler: tuple[str, ...] = ()


def compiler_candidates() -> list[list[str]]:
    """C compiler commands to try in order: ``$CC`` (may carry arguments) when it names a program, then
    ``cc``, ``gcc`` and ``clang`` on PATH (each binary once)."""
    found: list[list[str]] = []
    seen: set[str] = set()
    env = os.environ.get("CC", "").strip()
    if env:
        try:
            argv = shlex.split(env)
        except ValueError:
            argv = []
        exe = shutil.which(argv[0]) if argv else None
        if exe:
            found.append([exe, *argv[1:]])
            if len(argv) == 1:
                seen.add(os.path.realpath(exe))
    for name in ("cc", "gcc", "clang"):
        exe = shutil.which(name)
        if exe and os.path.realpath(exe) not in seen:
            seen.add(os.path.realpath(exe))
            found.append([exe])
    return found


def find_compiler() -> list[str] | None:
    """The first compiler command to try (see ``compiler_candidates``); ``load`` falls back to the next ones
    when it does not work."""
    candidates = compiler_candidates()
    return candidates[0] if candidates else None


def cache_dir() -> Path:
    """Folder of the compiled libraries."""
    root = os.environ.get("QUANTGRAPH_CACHE")
    if root:
        return Path(root).expanduser() / "native"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "quantgraph" / "native"


def _cpu_signature() -> str:
    """CPU model and feature flags, so a cached ``-march=native`` build is never loaded on another CPU."""
    parts = [platform.machine()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU implementer", "CPU part"):
                    parts.append(line.strip())
                if line.strip() == "":
                    break  # the first processor is enough
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def _compiler_version(cc: list[str]) -> str:
    try:
        res = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30)
        return res.stdout.splitlines()[0] if res.stdout else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def isa() -> str:
    """The ISA level the kernels are built for: ``$QUANTGRAPH_NATIVE_ISA`` (native, avx2, portable)."""
    level = os.environ.get("QUANTGRAPH_NATIVE_ISA", "").strip() or "native"
    if level not in ISA_FLAG_SETS:
        raise InputError(
            f"QUANTGRAPH_NATIVE_ISA={level!r} is not an ISA level", f"use one of {', '.join(ISA_FLAG_SETS)}"
        )
    return level


def flag_sets() -> list[list[str]]:
    """The flag sets to try for the ISA level (see ``isa``), fastest first."""
    return ISA_FLAG_SETS[isa()] or FLAG_SETS


def library_key(cc: list[str]) -> str:
    """Hash of source, compiler, flags and CPU: the cached library's file name."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(cc).encode(), _compiler_version(cc).encode()):
        h.update(part)
        h.update(b"\0")
    h.update(repr((BASE_FLAGS, flag_sets())).encode())
    h.update(_cpu_signature().encode())
    return h.hexdigest()[:24]


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _check_cache_dir(out_dir: Path) -> None:
    """The cache folder must be the user's own and not writable by group or others (a library planted there
    would run its constructor in this process)."""
    try:
        st = out_dir.stat()
    except OSError:
        return  # not there yet: _compile creates it with the user's umask
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise InputError(
            f"the native kernel cache {out_dir} belongs to another user (uid {st.st_uid})",
            "set QUANTGRAPH_CACHE to a folder of your own",
        )
    if st.st_mode & 0o022:
        raise InputError(
            f"the native kernel cache {out_dir} is writable by group or others (mode {st.st_mode & 0o777:o})",
            f"run `chmod go-w {out_dir}` or set QUANTGRAPH_CACHE to a private folder",
        )


def _cached_library_ok(out_dir: Path, key: str) -> bool:
    """True when ``<key>.so`` exists with its flags file and matches the hash recorded when it was built; a
    missing, truncated or replaced library (or one without a recorded hash) is rebuilt."""
    _check_cache_dir(out_dir)
    path, flags, digest = (out_dir / f"{key}{ext}" for ext in (".so", ".flags", ".sha256"))
    try:
        if not (path.is_file() and flags.is_file() and digest.is_file()) or path.is_symlink():
            return False
        return file_sha256(path) == digest.read_text(encoding="utf-8").strip()
    except OSError:
        return False


def _compile(cc: list[str], out_dir: Path, key: str) -> tuple[Path, list[str], str] | str:
    """Compile with the first flag set that works: the final path, the extra flags used and the first
    error line of the faster flag sets that failed ("" when the first worked), or (no flag set works) the
    last error line."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{key}.so"
    errors: list[str] = []
    for extra in flag_sets():
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".so.tmp", dir=out_dir)
        os.close(fd)
        cmd = [*cc, *BASE_FLAGS, *extra, "-o", tmp, str(SOURCE), "-lm"]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            res = None
            errors.append(f"{type(exc).__name__}: {exc}")
        if res is not None and res.returncode == 0 and os.path.getsize(tmp) == 0:
            res = None
            errors.append("it wrote an empty library")
        if res is not None and res.returncode == 0:
            _write_atomic(out_dir / f"{key}.flags", (" ".join(extra) + "\n").encode())
            _write_atomic(out_dir / f"{key}.sha256", (file_sha256(Path(tmp)) + "\n").encode())
            os.replace(tmp, target)  # last: a library on disk always has its flags file
            return target, extra, (errors[0] or "unknown error") if errors else ""
        if res is not None:
            lines = [ln for ln in (res.stderr or res.stdout).splitlines() if "error" in ln] or [""]
            errors.append(lines[0].strip())
        Path(tmp).unlink(missing_ok=True)
    return errors[-1] or "unknown error"


def _bind(lib: ctypes.CDLL) -> None:
    """Declare the C signatures."""
    c = ctypes
    i64, i32, vp, dp = c.c_int64, c.c_int32, c.c_void_p, c.c_void_p
    spmm = [i64, i64, i64, vp, vp, c.c_int, vp, i64, i32, vp, c.c_int, i32, vp, i64, c.c_int]
    for name in ("csr_spmm_i8", "csr_spmm_i4", "csr_spmm_i2"):
        fn = getattr(lib, name)
        fn.argtypes = spmm
        fn.restype = c.c_int
    lib.csr_spmm_requant.argtypes = [
        c.c_int,
        *spmm[:12],
        dp,
        c.c_int,
        vp,
        c.c_int,
        i32,
        i32,
        c.c_int,
        vp,
        i64,
        c.c_int,
    ]
    lib.csr_spmm_requant.restype = c.c_int
    msg = [c.c_int, *spmm[:12], c.c_double, i32, i32, i32]  # message quantizer: m, z, qmin, qmax
    lib.csr_spmm_msg.argtypes = [*msg, vp, i64, c.c_int]
    lib.csr_spmm_msg.restype = c.c_int
    lib.csr_spmm_msg_requant.argtypes = [*msg, dp, c.c_int, vp, c.c_int, i32, i32, c.c_int, vp, i64, c.c_int]
    lib.csr_spmm_msg_requant.restype = c.c_int
    lib.requantize_i32.argtypes = [
        vp,
        i64,
        i64,
        i64,
        dp,
        c.c_int,
        vp,
        c.c_int,
        i32,
        i32,
        c.c_int,
        vp,
        c.c_int,
        i64,
        c.c_int,
    ]
    lib.requantize_i32.restype = c.c_int
    lib.requantize_affine.argtypes = [vp, c.c_int, i64, i64, i64, i32, vp, c.c_int, dp, c.c_int, vp, c.c_int,
                                      i32, i32, vp, c.c_int, i64, c.c_int]  # fmt: skip
    lib.requantize_affine.restype = c.c_int
    f32 = c.c_float
    lib.quantize_f32.argtypes = [vp, i64, i64, i64, f32, f32, f32, f32, vp, i64, c.c_int]
    lib.quantize_f32.restype = c.c_int
    lib.pack_i8.argtypes = [vp, i64, i64, i64, c.c_int, vp, i64, c.c_int]
    lib.pack_i8.restype = c.c_int
    lib.gemm_i8_packed_size.argtypes = [i64, i64]
    lib.gemm_i8_packed_size.restype = i64
    lib.gemm_i8_pack.argtypes = [vp, i64, i64, c.c_int, i64, vp, vp]
    lib.gemm_i8_pack.restype = c.c_int
    lib.gemm_i8.argtypes = [vp, i64, i64, i64, i32, vp, vp, i64, vp, c.c_int, vp, vp, i64, c.c_int]
    lib.gemm_i8.restype = c.c_int
    lib.csr_spmm_epilogue.argtypes = [c.c_int, *spmm[:12], c.c_int, c.c_double, i32, i32, i32, vp, c.c_int]
    lib.csr_spmm_epilogue.restype = c.c_int
    lib.rows_epilogue.argtypes = [vp, c.c_int, i64, i64, i64, vp, c.c_int]
    lib.rows_epilogue.restype = c.c_int
    lib.gemm_i8_epilogue.argtypes = [
        vp,
        vp,
        vp,
        vp,
        i64,
        i64,
        i64,
        i32,
        vp,
        vp,
        i64,
        vp,
        c.c_int,
        vp,
        vp,
        c.c_int,
    ]
    lib.gemm_i8_epilogue.restype = c.c_int
    lib.csr_spmm_mixed_f32.argtypes = [
        i64,
        i64,
        i64,
        vp,
        vp,
        c.c_int,
        vp,
        vp,
        vp,
        vp,
        vp,
        vp,
        vp,
        vp,
        i64,
        c.c_int,
    ]
    lib.csr_spmm_mixed_f32.restype = c.c_int
    lib.csr_build.argtypes = [vp, vp, i64, i64, vp, vp, c.c_int, vp]
    lib.csr_build.restype = c.c_int
    lib.qg_info.argtypes = [vp]
    lib.qg_info.restype = None


def load() -> NativeLib:
    """Build (first use) and load the kernels; raises InputError when no compiler is available."""
    level = isa()
    with _lock:
        if level in _loaded:
            return _loaded[level]
        candidates = compiler_candidates()
        if not candidates:
            raise InputError(*NO_COMPILER)
        out_dir = cache_dir()
        failures: list[str] = []
        for cc in candidates:  # a broken $CC falls back to cc / gcc / clang
            key = library_key(cc)
            path = out_dir / f"{key}.so"
            flags_file = out_dir / f"{key}.flags"
            if _cached_library_ok(out_dir, key):
                extra = flags_file.read_text(encoding="utf-8").split()
                reason = "cached build; delete the cache folder to rebuild and see the compiler's error"
                break
            try:
                result = _compile(cc, out_dir, key)
            except OSError as exc:
                raise EnvironmentFailure(  # the machine, not the input: exit 1
                    f"cannot write the native kernel cache {out_dir} ({exc.strerror or exc})",
                    "set QUANTGRAPH_CACHE to a writable folder",
                ) from None
            if not isinstance(result, str):
                path, extra, reason = result
                break
            failures.append(f"{cc[0]}: {result}")
        else:
            raise InputError(
                f"could not compile {SOURCE.name} with any C compiler ({'; '.join(failures)})",
                "install a working gcc (apt install build-essential) or point CC at one",
            )
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise InputError(
                f"could not load the compiled kernels {path} ({exc})", f"delete {out_dir} and retry"
            ) from exc
        _report_fallback(extra, reason, out_dir)
        _bind(lib)
        info = (ctypes.c_int32 * 4)()
        lib.qg_info(info)
        if info[0] != ABI_VERSION:
            raise InputError(
                f"compiled kernels {path} have ABI {info[0]}, expected {ABI_VERSION}",
                f"delete {out_dir} and retry",
            )
        _loaded[level] = NativeLib(
            lib, path, (*BASE_FLAGS, *extra), bool(info[1]), bool(info[2]), int(info[3]), tuple(cc)
        )
        return _loaded[level]


def _report_fallback(extra: list[str], reason: str, out_dir: Path) -> None:
    """Warn (or, with $QUANTGRAPH_NATIVE_STRICT=1, fail) when the build lacks flags of the fastest set."""
    missing = [flag for flag in flag_sets()[0] if flag not in extra]
    if not missing:
        return
    problem = (
        f"the native kernels were built without {' '.join(missing)} ({reason}): "
        "the integer kernels run slower than they can on this CPU"
    )
    fix = f"install a gcc or clang that accepts {' '.join(missing)} (or set CC), then delete {out_dir}"
    if os.environ.get(STRICT_ENV, "").strip() not in ("", "0"):
        raise EnvironmentFailure(problem, fix)
    warnings.warn(f"{problem}; {fix}", NativeFallbackWarning, stacklevel=3)


def available() -> bool:
    """True when a C compiler is on hand (the kernels can be built)."""
    return bool(compiler_candidates())
