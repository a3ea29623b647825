"""Seeded generators of malformed CLI inputs: every file format the CLI reads, and its flags.

Each ``Case`` names the files to create in a fresh folder, the argv (paths relative to that folder), the
outputs the command would write, and whether the input is certainly bad (then the command must fail).
``bad=False`` marks mutations that may leave a valid input (a flipped weight byte): the command may
succeed, but must then write all its outputs.
"""

from __future__ import annotations

import io
import json
import random
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SYN = "synthetic:nodes=60,seed=1"


@dataclass
class Case:
    label: str
    argv: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    bad: bool = True
    links: dict[str, Path] = field(default_factory=dict)  # name -> existing folder to copy


# ----- byte-level mutations (any format) -----


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(0, max(1, len(data) - 1))]


def garbage(rng: random.Random, data: bytes) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 16, 512, 4096]))


def flip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 4, 32])):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def splice(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + rng.randbytes(rng.randrange(1, 64)) + data[at + rng.randrange(0, 64) :]


CERTAIN = {"truncate": truncate, "garbage": garbage}
MAYBE = {"flip": flip, "splice": splice}


def zip_member_mutation(rng: random.Random, data: bytes) -> tuple[bytes, bool]:
    """Rewrite one member of a zip (mutated, or dropped): a valid zip whose content is damaged."""
    src = zipfile.ZipFile(io.BytesIO(data))
    names = src.namelist()
    victim = rng.choice(names)
    how = rng.choice(["drop", "garbage", "truncate", "flip"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for name in names:
            body = src.read(name)
            if name == victim:
                if how == "drop":
                    continue
                body = {"garbage": garbage, "truncate": truncate, "flip": flip}[how](rng, body)
            out.writestr(name, body)
    return buf.getvalue(), False  # a member may be optional (a version stamp, a serialization id)


def model_file_cases(rng: random.Random, base: dict[str, bytes], n: int) -> Iterator[Case]:
    """Checkpoints (.pt), torch.export programs (.pt2), ONNX and .qgn files, damaged at the byte level."""
    commands: dict[str, Callable[[str], tuple[list[str], list[str]]]] = {
        "pt": lambda m: (
            ["compile", m, "--data", SYN, "-o", "out.onnx", "--report", "r.json"],
            ["out.onnx", "r.json"],
        ),
        "pt2": lambda m: (["compile", m, "--data", SYN, "--policy", "fp32", "-o", "out.onnx"], ["out.onnx"]),
        "onnx": lambda m: (["eval", m, "--data", SYN, "--timeout", "20"], []),
        "qgn": lambda m: (["run", m, "--data", SYN, "-o", "logits.npy"], ["logits.npy"]),
    }
    for i in range(n):
        ext = rng.choice(sorted(commands))
        data = base[ext]
        kind = rng.choice(["truncate", "garbage", "flip", "splice", "member"])
        if kind == "member" and ext != "onnx":
            payload, bad = zip_member_mutation(rng, data)
        elif kind in CERTAIN or kind == "member":
            kind = kind if kind in CERTAIN else "truncate"
            payload, bad = CERTAIN[kind](rng, data), True
        else:
            payload, bad = MAYBE[kind](rng, data), False
        if ext == "pt2" and kind != "garbage":
            bad = bad and kind != "member"  # torch.export may not read every member it stores
        name = f"model{i}.{ext}"
        argv, outputs = commands[ext](name)
        yield Case(f"{ext}-{kind}", argv, {name: payload}, outputs, bad)


# ----- .qgn programs: structural mutations of program.json -----


def _mutate_json(rng: random.Random, obj):
    """Replace, drop or retype one value somewhere in a JSON tree."""
    path = []
    node = obj
    while isinstance(node, (dict, list)) and node and rng.random() < 0.7:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append((node, key))
        node = node[key]
    if not path:
        return rng.choice([None, 7, "x", [], {}])
    parent, key = path[-1]
    choice = rng.choice(["drop", "none", "int", "str", "list", "dict", "huge", "neg", "float"])
    values = {
        "none": None,
        "int": 3,
        "str": "aten.from_file",
        "list": [1, [2]],
        "dict": {"a": 1},
        "huge": 2**62,
        "neg": -(2**31),
        "float": float("nan"),
    }
    if choice == "drop":
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    else:
        parent[key] = values[choice]
    return obj


def _reseal(doc: dict, arrays: dict[str, np.ndarray]) -> dict:
    """Declare ``arrays`` and recompute the checksum, as a hostile author would (tests the checks behind it)."""
    from quantgraph.native.artifact import program_digest

    doc = json.loads(json.dumps(doc)) if isinstance(doc, dict) else {"not": doc}
    doc["arrays"] = {k: {"dtype": a.dtype.name, "shape": list(a.shape)} for k, a in arrays.items()}
    doc["sha256"] = program_digest(json.loads(json.dumps(doc)), arrays)
    return doc


def qgn_cases(rng: random.Random, base: dict[str, bytes], n: int) -> Iterator[Case]:
    """Mutated programs and arrays. Without ``reseal`` any change breaks the recorded checksum, so the run must
    fail; resealed ones reach the program and array checks and may still be valid programs."""
    src = zipfile.ZipFile(io.BytesIO(base["qgn"]))
    program = json.loads(src.read("program.json"))
    arrays = [nm for nm in src.namelist() if nm.endswith(".npy")]
    stored = {nm[len("arrays/") : -len(".npy")]: np.load(io.BytesIO(src.read(nm))) for nm in arrays}
    for i in range(n):
        buf = io.BytesIO()
        reseal = rng.random() < 0.5
        current = dict(stored)
        if rng.random() < 0.6:
            mutated = _mutate_json(rng, json.loads(json.dumps(program)))
            changed = mutated != program
            label = "qgn-program"
        else:
            mutated = program
            victim = rng.choice(arrays)
            key = victim[len("arrays/") : -len(".npy")]
            arr = stored[key]
            how = rng.choice(["shape", "dtype", "nan", "empty", "huge"])
            new = {
                "shape": lambda a: a.reshape(-1)[: max(1, a.size // 2)],
                "dtype": lambda a: a.astype(np.float64 if a.dtype.kind in "iu" else np.int64),
                "nan": lambda a: np.full(a.shape, np.nan, np.float32),
                "empty": lambda a: np.zeros((0,), a.dtype),
                "huge": lambda a: np.full(a.shape, 2**40, np.int64),
            }[how](arr)
            current[key] = new
            changed = new.dtype != arr.dtype or new.shape != arr.shape or not np.array_equal(new, arr)
            label = f"qgn-array-{how}"
        if reseal:
            mutated = _reseal(mutated, current)
            label += "-resealed"
        with zipfile.ZipFile(buf, "w") as out:
            out.writestr("program.json", json.dumps(mutated).encode())
            for key, value in sorted(current.items()):
                b = io.BytesIO()
                np.save(b, value, allow_pickle=False)
                out.writestr(f"arrays/{key}.npy", b.getvalue())
        name = f"m{i}.qgn"
        # resealed: a changed value may still be a valid program (e.g. a metadata field), so bad is not certain
        yield Case(
            label,
            ["run", name, "--data", SYN, "-o", "logits.npy"],
            {name: buf.getvalue()},
            ["logits.npy"],
            changed and not reseal,
        )


# ----- graph data: .npz, .pt, JSON, GML/GraphML -----


def _graph(rng: random.Random, nodes: int = 60, features: int = 32) -> dict[str, np.ndarray]:
    edges = rng.randrange(0, 300)
    g = np.random.default_rng(rng.randrange(2**31))
    return {
        "x": g.normal(size=(nodes, features)).astype(np.float32),
        "edge_index": g.integers(0, nodes, size=(2, edges)),
        "y": g.integers(0, 4, size=nodes),
    }


_BAD_FIELDS: dict[str, Callable[[dict, random.Random], None]] = {
    "nan-x": lambda f, r: f["x"].__setitem__((0, 0), np.nan),
    "inf-x": lambda f, r: f["x"].__setitem__((1, 1), np.inf),
    "negative-index": lambda f, r: f.__setitem__("edge_index", np.array([[-1, 0], [0, 1]])),
    "index-too-big": lambda f, r: f.__setitem__("edge_index", np.array([[0, 10**6], [1, 0]])),
    "float-edges": lambda f, r: f.__setitem__("edge_index", f["edge_index"].astype(np.float32)),
    "edges-3-rows": lambda f, r: f.__setitem__("edge_index", np.zeros((3, 4), np.int64)),
    "1d-x": lambda f, r: f.__setitem__("x", f["x"][:, 0]),
    "3d-x": lambda f, r: f.__setitem__("x", f["x"][:, :, None]),
    "no-x": lambda f, r: f.pop("x"),
    "no-edges": lambda f, r: f.pop("edge_index"),
    "empty-x": lambda f, r: f.__setitem__("x", np.zeros((0, 32), np.float32)),
    "zero-features": lambda f, r: f.__setitem__("x", np.zeros((60, 0), np.float32)),
    "wrong-width": lambda f, r: f.__setitem__("x", f["x"][:, : r.randrange(1, 31)]),
    "string-x": lambda f, r: f.__setitem__("x", np.array([["a"] * 32] * 60)),
    "complex-x": lambda f, r: f.__setitem__("x", f["x"].astype(np.complex64)),
    "bool-edges": lambda f, r: f.__setitem__("edge_index", f["edge_index"] > 5),
    "huge-uint64": lambda f, r: f.__setitem__("edge_index", np.full((2, 3), 2**63 + 5, np.uint64)),
    "float-labels": lambda f, r: f.__setitem__("y", f["y"].astype(np.float32) + 0.5),
    "negative-labels": lambda f, r: f.__setitem__("y", -f["y"] - 1),
    "short-labels": lambda f, r: f.__setitem__("y", f["y"][:5]),
    "mask-3-valued": lambda f, r: f.__setitem__("train_mask", np.arange(60) % 3),
}
_OK_FIELDS: dict[str, Callable[[dict, random.Random], None]] = {
    "plain": lambda f, r: None,
    "uint64-edges": lambda f, r: f.__setitem__("edge_index", f["edge_index"].astype(np.uint64)),
    "uint8-edges": lambda f, r: f.__setitem__("edge_index", f["edge_index"].astype(np.uint8)),
    "int32-edges": lambda f, r: f.__setitem__("edge_index", f["edge_index"].astype(np.int32)),
    "float64-x": lambda f, r: f.__setitem__("x", f["x"].astype(np.float64)),
    "no-edges-at-all": lambda f, r: f.__setitem__("edge_index", np.zeros((2, 0), np.int64)),
    "self-loops": lambda f, r: f.__setitem__("edge_index", np.stack([np.arange(60), np.arange(60)])),
}


def graph_fields(rng: random.Random) -> tuple[str, dict, bool]:
    fields = _graph(rng)
    if rng.random() < 0.75:
        name = rng.choice(sorted(_BAD_FIELDS))
        _BAD_FIELDS[name](fields, rng)
        return name, fields, True
    name = rng.choice(sorted(_OK_FIELDS))
    _OK_FIELDS[name](fields, rng)
    return name, fields, False


def _npz(fields: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **fields)
    return buf.getvalue()


def _pt(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _tensor(value: np.ndarray):
    try:
        return torch.from_numpy(np.ascontiguousarray(value))
    except TypeError:
        return value.tolist()


def _node_link(fields: dict, rng: random.Random):
    x = fields.get("x")
    n = 60
    nodes = []
    for i in range(n):
        node = {"id": i}
        if x is not None and getattr(x, "ndim", 0) == 2 and i < len(x):
            node["x"] = [v if isinstance(v, (int, float)) else str(v) for v in x[i].tolist()]
        if "y" in fields and i < len(fields["y"]):
            node["y"] = fields["y"][i].item()
        for mask in ("train_mask", "val_mask", "test_mask"):
            if mask in fields and i < len(fields[mask]):
                node[mask] = fields[mask][i].item()
        nodes.append(node)
    ei = fields.get("edge_index")
    links = []
    if ei is not None and getattr(ei, "ndim", 0) == 2 and ei.shape[0] >= 2:
        links = [{"source": int(a), "target": int(b)} for a, b in zip(ei[0][:200], ei[1][:200], strict=True)]
    return {"directed": True, "multigraph": False, "graph": {}, "nodes": nodes, "links": links}


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


_WEIRD_JSON = [
    lambda r: ("[" * r.randrange(1000, 200_000)).encode(),
    lambda r: ("[" * 100_000 + "]" * 100_000).encode(),
    lambda r: b'{"nodes": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}",
    lambda r: b'{"nodes": 5}',
    lambda r: b'{"nodes": [{"id": 0, "x": "abc"}], "links": []}',
    lambda r: b'{"nodes": [{"id": 0, "x": [1e999]}], "links": []}',
    lambda r: b'{"nodes": [{"id": 0, "x": [1]}], "links": [{"source": 0, "target": 9}]}',
    lambda r: b'{"nodes": [], "links": []}',
    lambda r: b"\xff\xfe not utf-8",
    lambda r: b"null",
    lambda r: b'{"nodes": [{"id": [1, 2], "x": [1]}], "links": []}',
]


def data_file_cases(rng: random.Random, onnx_name: str, n: int) -> Iterator[Case]:
    """Graph files for ``eval MODEL --data FILE``, in each format, with bad or valid fields."""
    for i in range(n):
        fmt = rng.choice(["npz", "pt", "json", "json-weird", "gml", "graphml", "bytes"])
        label, fields, bad = graph_fields(rng)
        if fmt == "npz":
            try:
                payload = _npz(fields)
            except ValueError:
                continue
            name = f"g{i}.npz"
        elif fmt == "pt":
            obj = {k: _tensor(v) for k, v in fields.items()}
            extra = rng.choice(["none", "sparse", "quantized", "list", "nested", "data-object"])
            if extra == "sparse" and isinstance(obj.get("x"), torch.Tensor) and obj["x"].dim() == 2:
                obj["x"], bad, label = obj["x"].to_sparse(), True, "sparse-x"
            elif (
                extra == "quantized"
                and isinstance(obj.get("x"), torch.Tensor)
                and obj["x"].is_floating_point()
            ):
                obj["x"] = torch.quantize_per_tensor(obj["x"].float(), 0.1, 0, torch.qint8)
                bad, label = True, "quantized-x"
            elif extra == "list":
                obj, bad, label = [obj], True, "list"
            elif extra == "nested":
                obj["x"], bad, label = {"inner": obj.get("x")}, True, "nested-x"
            payload = _pt(obj)
            name = f"g{i}.pt"
        elif fmt == "json":
            payload, name = _json_bytes(_node_link(fields, rng)), f"g{i}.json"
            bad = bad and label not in (
                "float-labels",
                "huge-uint64",
                "float-edges",
                "bool-edges",
                "string-x",
                "complex-x",
                "no-edges",
                "3d-x",
                "edges-3-rows",
                "index-too-big",
            )
            bad = bad and label not in ("negative-index",)
        elif fmt == "json-weird":
            payload, name, label, bad = rng.choice(_WEIRD_JSON)(rng), f"g{i}.json", "weird-json", True
        elif fmt in ("gml", "graphml"):
            payload, name, label, bad = garbage(rng, b"") or b"graph [", f"g{i}.{fmt}", "garbage", True
        else:
            payload = garbage(rng, b"")
            name, label, bad = f"g{i}.{rng.choice(['npz', 'pt', 'json'])}", "garbage", True
        yield Case(
            f"data-{fmt}-{label}",
            ["eval", onnx_name, "--data", name, "--split", "all"],
            {name: payload},
            [],
            bad,
        )


# ----- graph classification .npz -----


def gc_cases(rng: random.Random, base: dict[str, np.ndarray], n: int) -> Iterator[Case]:
    for i in range(n):
        arrays = {k: v.copy() for k, v in base.items()}
        key = rng.choice(sorted(arrays))
        how = rng.choice(
            ["drop", "drop-split", "bad-ptr", "float-y", "negative-y", "shape", "dtype", "truncate"]
        )
        bad = True
        if how == "drop":
            arrays.pop(key)
        elif how == "drop-split":
            prefix = rng.choice(["tr", "val", "te"])
            arrays = {k: v for k, v in arrays.items() if not k.startswith(prefix + "_")}
        elif how == "bad-ptr":
            p = key.split("_")[0] + "_node_ptr"
            arrays[p] = arrays[p][::-1].copy()
        elif how == "float-y":
            p = key.split("_")[0] + "_y"
            arrays[p] = arrays[p].astype(np.float32) + 0.5
        elif how == "negative-y":
            p = key.split("_")[0] + "_y"
            arrays[p] = -arrays[p] - 1
        elif how == "shape":
            arrays[key] = arrays[key].reshape(-1)[: max(1, arrays[key].size // 3)]
            bad = not key.endswith("_y")
        elif how == "dtype":
            arrays[key] = arrays[key].astype(np.float32 if arrays[key].dtype.kind in "iu" else np.int64)
            bad = key.endswith(("_edge_index", "_node_ptr", "_edge_ptr"))
        payload = _npz(arrays)
        if how == "truncate":
            payload = truncate(rng, payload)
        name = f"gc{i}.npz"
        argv = ["train", "--arch", "gin_graph", "--data", name, "--epochs", "1", "-o", "gin.pt", "--quiet"]
        yield Case(f"gc-{how}", argv, {name: payload}, ["gin.pt"], bad)


# ----- Planetoid folders -----


def planetoid_cases(rng: random.Random, planetoid: Path | None, onnx_name: str, n: int) -> Iterator[Case]:
    if planetoid is None:
        return
    names = sorted(p.name for p in planetoid.glob("ind.cora.*"))
    for i in range(n):
        victim = rng.choice(names)
        data = (planetoid / victim).read_bytes()
        how = rng.choice(["truncate", "garbage", "missing", "empty"])
        files = {f"raw{i}/{nm}": (planetoid / nm).read_bytes() for nm in names if nm != victim}
        if how != "missing":
            files[f"raw{i}/{victim}"] = b"" if how == "empty" else CERTAIN[how](rng, data)
        argv = ["eval", onnx_name, "--data", "cora", "--data-root", f"raw{i}"]
        yield Case(f"planetoid-{how}-{victim.split('.', 2)[2]}", argv, files, [], True)


# ----- flags -----

_BAD_NUMBERS = ["0", "-1", "inf", "-inf", "nan", "1e309", "abc", "", "99999999999999999999", "0x10"]


def flag_cases(rng: random.Random, names: dict[str, str], n: int) -> Iterator[Case]:
    ckpt, onnx_name, qgn = names["pt"], names["onnx"], names["qgn"]
    compile_ = ["compile", ckpt, "--data", SYN, "-o", "out.onnx", "--quiet"]
    numeric = {
        "compile": (
            compile_,
            [
                "--bits",
                "--epochs",
                "--lr",
                "--weight-decay",
                "--seed",
                "--batch-size",
                "--p-min",
                "--p-max",
                "--percentile-tail",
                "--lambda",
                "--target-bits",
                "--search-epochs",
            ],
            ["out.onnx"],
        ),
        "train": (
            ["train", "--arch", "gcn", "--data", SYN, "-o", "out.pt", "--quiet"],
            ["--epochs", "--lr", "--hidden", "--seed"],
            ["out.pt"],
        ),
        "run": (["run", qgn, "--data", SYN, "-o", "logits.npy"], ["--threads"], ["logits.npy"]),
        "eval": (["eval", onnx_name, "--data", SYN], ["--timeout"], []),
    }
    specials = [
        (compile_[:-3] + ["-o", ckpt], "o-is-input"),
        (compile_ + ["--report", "out.onnx"], "report-is-output"),
        (compile_[:-3] + ["-o", "."], "o-is-folder"),
        (compile_[:-3] + ["-o", "afile/out.onnx"], "o-under-file"),
        (compile_ + ["--pipeline", "insert-qdq"], "pipeline-insert-qdq"),
        (compile_ + ["--pipeline", ",,"], "pipeline-empty"),
        (compile_ + ["--pipeline", "canonicalize,nope"], "pipeline-unknown"),
        (compile_ + ["--pass", "mod:Cls@"], "pass-at"),
        (compile_ + ["--pass", "nocolon"], "pass-no-class"),
        (compile_ + ["--pass", "tests.user_modules:MarkerPass@middle=x"], "pass-where"),
        (compile_ + ["--bits", "1", "--policy", "fp32"], "bits-fp32"),
        (compile_ + ["--policy", "nope"], "policy-unknown"),
        (compile_ + ["--bit-candidates", "2,x"], "bit-candidates"),
        (compile_ + ["--skip-role", "nope"], "skip-role"),
        (compile_ + ["--p-min", "0.5", "--p-max", "0.1"], "p-order"),
        (compile_ + ["--import", "os"], "import-without-trust"),
        (compile_ + ["--backend", "tpu"], "backend"),
        (["run", qgn, "--data", SYN, "-o", qgn], "run-o-is-input"),
        (["train", "--arch", "gin_graph", "--data", SYN, "-o", "out.pt"], "arch-task"),
        (["eval", onnx_name, "--data", "nosuchdataset"], "data-name"),
        (["eval", onnx_name, "--data", "synthetic:nodes=-5"], "synthetic-spec"),
        (["eval", onnx_name, "--data", "synthetic:bogus=1"], "synthetic-key"),
        (["compile", "nofile.pt", "--data", SYN, "-o", "out.onnx"], "missing-model"),
        (["frobnicate"], "unknown-command"),
    ]
    for _ in range(n):
        if rng.random() < 0.4:
            argv, label = rng.choice(specials)
            outputs = [a for a in ("out.onnx", "out.pt", "logits.npy") if a in argv]
            yield Case(f"flag-{label}", list(argv), {"afile": b"x"}, outputs, True)
            continue
        command = rng.choice(sorted(numeric))
        argv, flags, outputs = numeric[command]
        flag = rng.choice(flags)
        value = rng.choice(_BAD_NUMBERS)
        if flag in ("--p-min", "--p-max", "--percentile-tail") and value == "0":
            value = "-1"
        if flag in ("--weight-decay", "--seed", "--lambda") and value == "0":
            value = "-1"
        if flag == "--bits" and value in ("0", "-1"):
            value = rng.choice(["0", "1", "9", "-1"])
        yield Case(f"flag-{command}{flag}={value}", [*argv, flag, value], {}, outputs, True)
