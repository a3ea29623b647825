"""Checks of the CLI's flags and output paths, run before any work: each bad value is one InputError."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable
from pathlib import Path

from quantgraph.errors import EnvironmentFailure, InputError

#: the most kernel threads ``run --threads`` accepts (OpenMP crashes when thread creation runs out)
MAX_THREADS = 1024  # = quantgraph.native.kernels.MAX_THREADS (not imported: that module loads numpy/ctypes)
MAX_HIDDEN = 1 << 16
MAX_EPOCHS = 1_000_000
MAX_SEED = 2**32 - 1  # numpy's seed range


def check_args(args: argparse.Namespace) -> None:
    """Validate the parsed flags of any command; raise InputError naming the flag and its valid range."""
    _int_range(args, "hidden", 1, MAX_HIDDEN)
    _int_range(args, "epochs", 1, MAX_EPOCHS)
    _int_range(args, "search_epochs", 1, MAX_EPOCHS)
    _int_range(args, "batch_size", 1, 1 << 24)
    _int_range(args, "seed", 0, MAX_SEED)
    _int_range(args, "sample_seed", 0, MAX_SEED)
    _int_range(args, "sample_hops", 0, 64)
    _int_range(args, "threads", 1, MAX_THREADS)
    _int_range(args, "parts", 1, 1 << 20)
    _int_range(args, "workers", 1, 4096)
    _float_range(args, "lr", 0.0, 10.0, low_open=True)
    _float_range(args, "weight_decay", 0.0, 10.0)
    _float_range(args, "p_min", 0.0, 1.0)
    _float_range(args, "p_max", 0.0, 1.0)
    _float_range(args, "percentile_tail", 0.0, 0.5, low_open=True, high_open=True)
    _float_range(args, "lambda_", 0.0, 1e6, flag="--lambda")
    _float_range(args, "target_bits", 2.0, 8.0)
    _float_range(args, "target_kb", 0.0, 1e12, low_open=True)
    _float_range(args, "timeout", 0.0, 1e7, low_open=True)
    p_min, p_max = getattr(args, "p_min", None), getattr(args, "p_max", None)
    if p_min is not None and p_max is not None and p_min > p_max:
        raise InputError(f"--p-min {p_min} is above --p-max {p_max}", "give --p-min <= --p-max")
    _check_bits(args)
    if getattr(args, "bit_candidates", None) is not None:
        parse_bit_candidates(args.bit_candidates)
    for spec in getattr(args, "passes", None) or []:
        parse_pass_spec(spec)
    if getattr(args, "pipeline", None) is not None:
        parse_pipeline(args.pipeline)
    check_outputs(args)


def parse_pass_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``module:Class[@before=NAME|@after=NAME]`` -> (``module:Class``, before, after)."""
    fix = "write --pass module:Class, module:Class@before=PASS or module:Class@after=PASS"
    target, at, where = spec.partition("@")
    module, colon, cls = target.partition(":")
    if not colon or not module.strip() or not cls.strip() or not cls.strip().isidentifier():
        raise InputError(f"bad --pass '{spec}': expected module:Class", fix)
    before = after = None
    if at:
        key, _, name = where.partition("=")
        if key not in ("before", "after") or not name.strip():
            raise InputError(f"bad --pass placement '@{where}' in '{spec}'", fix)
        before, after = (name.strip(), None) if key == "before" else (None, name.strip())
    return target.strip(), before, after


def parse_pipeline(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",")]
    if not names or any(not n for n in names):
        raise InputError(
            f"--pipeline '{text}' has an empty pass name", "list pass names separated by commas, e.g. a,b,c"
        )
    return names


def parse_bit_candidates(text: str) -> list[int]:
    try:
        bits = [int(b) for b in text.split(",")]
    except ValueError:
        bits = []
    if not bits or any(not 2 <= b <= 8 for b in bits):
        raise InputError(
            f"--bit-candidates '{text}' is not a comma-separated list of bitwidths 2..8", "e.g. 2,4,8"
        )
    return bits


def _check_bits(args: argparse.Namespace) -> None:
    bits = getattr(args, "bits", None)
    if bits is None:
        return
    if not 2 <= bits <= 8:
        raise InputError(f"--bits {bits} is out of range (bits={bits})", "use a bitwidth from 2 to 8")
    policy = getattr(args, "policy", None)
    if policy is not None:
        from quantgraph.policies import available_policies

        pol = available_policies().get(policy)
        if pol is not None and not pol.quantizes:
            raise InputError(
                f"--bits {bits} has no effect with --policy {policy}, which does not quantize",
                "drop --bits, or choose a quantizing policy such as minmax",
            )


def _int_range(args: argparse.Namespace, dest: str, low: int, high: int) -> None:
    value = getattr(args, dest, None)
    if value is not None and not low <= value <= high:
        flag = "--" + dest.replace("_", "-")
        raise InputError(f"{flag} {value} is out of range", f"give {flag} an integer from {low} to {high}")


def _float_range(
    args: argparse.Namespace,
    dest: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    flag: str | None = None,
) -> None:
    value = getattr(args, dest, None)
    if value is None:
        return
    flag = flag or "--" + dest.replace("_", "-")
    ok = math.isfinite(value) and (value > low if low_open else value >= low)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise InputError(
            f"{flag} {value} is out of range", f"give {flag} a number in {left}{low}, {high}{right}"
        )


def _inputs(args: argparse.Namespace) -> list[str]:
    files = [getattr(args, k, None) for k in ("model", "file")]
    data = getattr(args, "data", None)
    if data and os.path.exists(data):
        files.append(data)
    return [f for f in files if f]


def check_outputs(args: argparse.Namespace) -> None:
    """Every output path: not an input, not another output, not a folder, inside a folder that can exist."""
    outputs = [(flag, getattr(args, dest, None)) for flag, dest in (("-o", "output"), ("--report", "report"))]
    outputs = [(flag, path) for flag, path in outputs if path]
    check_output_paths(outputs, _inputs(args))


def check_output_paths(outputs: list[tuple[str, str]], inputs: Iterable[str]) -> None:
    from quantgraph.fileio import same_file

    inputs = list(inputs)
    for i, (flag, path) in enumerate(outputs):
        for source in inputs:
            if same_file(path, source):
                raise InputError(
                    f"{flag} {path} is the input file {source}; writing it would destroy the input",
                    f"choose another {flag} path",
                )
        for other_flag, other in outputs[:i]:
            if same_file(path, other):
                raise InputError(f"{flag} and {other_flag} both name {path}", f"give {flag} its own path")
        target = Path(path)
        if target.is_dir():
            raise EnvironmentFailure(
                f"{flag} {path} is a folder", f"give a file name, e.g. {target / 'out'}{_suffix(flag)}"
            )
        if target.exists() and not target.is_file():
            raise InputError(
                f"{flag} {path} exists and is not a regular file (a device, pipe or socket)",
                f"give {flag} the path of a regular file",
            )
        parent = target.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise EnvironmentFailure(
                f"{flag} {path}: {parent} is a file, not a folder", "choose a path inside a folder"
            )


def _suffix(flag: str) -> str:
    return ".json" if flag == "--report" else ""
