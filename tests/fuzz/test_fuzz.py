"""The fuzz suite: seeded malformed inputs for every format and flag the CLI reads, run through the CLI.

For every case: no crash or hang, no traceback, exit 0/1/2 only (3 is an internal error), exactly one
``error:`` line when it fails, non-zero exit on certainly-bad input, no output left behind on failure and
every output present on success, and no file outside the outputs created, changed or removed.

Fast subset: in the default test run. Long run: ``pytest tests/fuzz --fuzz-long`` (1200 cases).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from quantgraph.cli import main

from ..conftest import REPO, data_root
from . import generators as gen
from .runner import Worker, fuzz_env

TIME_LIMIT = 180.0  # seconds per case before it counts as a hang


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> dict:
    """Valid base files (checkpoint, .pt2, ONNX, .qgn, graph-classification arrays) to mutate."""
    root = tmp_path_factory.mktemp("fuzz")
    base = root / "base"
    base.mkdir()
    syn = gen.SYN
    ckpt = base / "gcn.pt"
    assert main(["train", "--arch", "gcn", "--data", syn, "--epochs", "3", "--quiet", "-o", str(ckpt)]) == 0
    assert main(["compile", str(ckpt), "--data", syn, "-o", str(base / "gcn.onnx"), "--quiet"]) == 0
    qgn = base / "gcn.qgn"
    assert main(["compile", str(ckpt), "--data", syn, "--backend", "native", "-o", str(qgn), "--quiet"]) == 0
    from quantgraph.data import load_dataset

    from ..user_modules import UserGNN

    g = load_dataset(syn)
    dims = {"x": {0: torch.export.Dim("n")}, "edge_index": {1: torch.export.Dim("e")}}
    program = torch.export.export(
        UserGNN(g.num_features, 8, 4).eval(), (g.x, g.edge_index), dynamic_shapes=dims
    )
    torch.export.save(program, base / "user.pt2")
    rng = np.random.default_rng(0)
    gc = {}
    for prefix in ("tr", "val", "te"):
        gc |= {
            f"{prefix}_x": rng.normal(size=(24, 4)).astype(np.float32),
            f"{prefix}_edge_index": np.array([[0, 1] * 4, [1, 0] * 4]),  # local ids
            f"{prefix}_node_ptr": np.array([0, 6, 12, 18, 24]),
            f"{prefix}_edge_ptr": np.array([0, 2, 4, 6, 8]),
            f"{prefix}_y": np.array([0, 1, 0, 1]),
        }
    files = {"pt": ckpt, "pt2": base / "user.pt2", "onnx": base / "gcn.onnx", "qgn": qgn}
    home, cache = root / "home", root / "cache"
    home.mkdir()
    cache.mkdir()
    root_data = data_root()
    planetoid = None
    if root_data is not None:
        flat = root_data / "planetoid"
        planetoid = flat if (flat / "ind.cora.x").exists() else None
    worker = Worker(fuzz_env(REPO, home, cache), root, TIME_LIMIT)
    warm = root / "warm"
    warm.mkdir()
    shutil.copy(qgn, warm / "m.qgn")
    assert worker.run(["run", "m.qgn", "--data", syn, "--quiet"], warm).rc == 0  # builds the kernel cache
    yield {
        "root": root,
        "base": base,
        "files": files,
        "bytes": {k: p.read_bytes() for k, p in files.items()},
        "gc": gc,
        "planetoid": planetoid,
        "worker": worker,
        "home": home,
        "cache": cache,
    }
    worker.close()


def _cases(sandbox: dict, count: int, seed: int):
    rng = random.Random(seed)
    names = {"pt": "base.pt", "onnx": "base.onnx", "qgn": "base.qgn"}
    shares = [
        (gen.model_file_cases, (sandbox["bytes"],), 0.22),
        (gen.qgn_cases, (sandbox["bytes"],), 0.12),
        (gen.data_file_cases, ("base.onnx",), 0.26),
        (gen.gc_cases, (sandbox["gc"],), 0.1),
        (gen.planetoid_cases, (sandbox["planetoid"], "base.onnx"), 0.08),
        (gen.flag_cases, (names,), 0.22),
    ]
    out = []
    for make, args, share in shares:
        out.extend(make(random.Random(rng.randrange(2**32)), *args, max(1, round(count * share))))
    random.Random(seed).shuffle(out)
    return out


#: onnxruntime (1.32) keeps a telemetry device id and database here on import; not ours to change
ORT_TELEMETRY = "/.cache/Microsoft/DeveloperTools/"


def _snapshot(*folders: Path) -> dict[str, str]:
    state = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if ORT_TELEMETRY in str(p):
                continue
            if p.is_file() or p.is_symlink():
                st = p.lstat()
                digest = hashlib.sha256(p.read_bytes()).hexdigest()[:16] if st.st_size < 1 << 22 else ""
                state[str(p)] = f"{st.st_size}:{st.st_mtime_ns}:{st.st_mode}:{digest}"
    return state


def _prepare(sandbox: dict, case: gen.Case, index: int) -> Path:
    folder = sandbox["root"] / "cases" / f"{index:05d}"
    folder.mkdir(parents=True)
    for src, name in (
        (sandbox["files"]["pt"], "base.pt"),
        (sandbox["files"]["onnx"], "base.onnx"),
        (sandbox["files"]["qgn"], "base.qgn"),
    ):
        shutil.copy(src, folder / name)
    for name, payload in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(payload)
    return folder


def _judge(case: gen.Case, outcome, before: dict, after: dict, folder: Path) -> list[str]:
    problems = []
    progress = "quantgraph: "  # stage timings, printed to stderr without --quiet: not error lines
    lines = [ln for ln in outcome.stderr.splitlines() if ln.strip() and not ln.startswith(progress)]
    if outcome.crashed:
        problems.append(f"crash (exit {outcome.rc})")
    if outcome.hung:
        problems.append("hang")
    if "Traceback" in outcome.stderr:
        problems.append("traceback")
    if outcome.rc not in (0, 1, 2) and not (outcome.crashed or outcome.hung):
        problems.append(f"exit {outcome.rc}")
    if outcome.rc not in (0, None) and not outcome.crashed:
        if len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"{len(lines)} stderr lines")
        if any("internal error" in ln for ln in lines):
            problems.append("internal error")
    if outcome.rc == 0 and case.bad:
        problems.append("exit 0 on bad input")
    outputs = {str(folder / o) for o in case.outputs}
    if outcome.rc == 0 and any(not Path(o).exists() for o in outputs):
        problems.append("missing output")
    if outcome.rc != 0 and any(Path(o).exists() for o in outputs):
        problems.append("partial output")
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} - outputs
    if changed:
        problems.append(f"touched {sorted(changed)[:3]}")
    return problems


def test_fuzz_cli(sandbox, fuzz_config):
    cases = _cases(sandbox, fuzz_config["cases"], fuzz_config["seed"])
    tally: Counter = Counter()
    failures = []
    watched = (sandbox["home"], sandbox["cache"], sandbox["base"])
    for i, case in enumerate(cases):
        folder = _prepare(sandbox, case, i)
        before = _snapshot(folder, *watched)
        outcome = sandbox["worker"].run(case.argv, folder)
        after = _snapshot(folder, *watched)
        problems = _judge(case, outcome, before, after, folder)
        tally["cases"] += 1
        tally["exit 0" if outcome.rc == 0 else f"exit {outcome.rc}"] += 1
        for p in problems:
            tally[p.split(" [")[0].split(" (")[0]] += 1
        if problems:
            failures.append(
                {
                    "case": i,
                    "label": case.label,
                    "argv": case.argv,
                    "problems": problems,
                    "stderr": outcome.stderr[-600:],
                }
            )
        else:
            shutil.rmtree(folder)
    summary = {
        "seed": fuzz_config["seed"],
        "tally": dict(tally),
        "by_label": dict(Counter(c.label.split("-")[0] for c in cases)),
    }
    report = sandbox["root"] / "last_run.json"  # every failing case with its argv and stderr
    report.write_text(json.dumps({**summary, "failures": failures}, indent=1) + "\n")
    print(json.dumps(summary), f"(cases: {report})")
    assert not failures, json.dumps(failures[:10], indent=1)
