"""Wall time of `quantgraph compile` per policy (median of repeats), for docs/results.md.

    python tools/bench_compile.py --data cora --data-root ../shared/data/planetoid --repeats 3

Trains one zoo GCN (seed 0), then times compile (trace + passes + QAT + ONNX export + onnxruntime
verification) through the Python API, which is what the CLI runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from quantgraph.compiler import compile as qg_compile
from quantgraph.data import load_dataset
from quantgraph.models import TRAIN_DEFAULTS, build_model
from quantgraph.training import train_node_classifier


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="cora")
    p.add_argument("--data-root", default=None)
    p.add_argument("--arch", default="gcn")
    p.add_argument("--policies", default="minmax:8,qat:4,degree-quant:8,degree-quant:4")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    data = load_dataset(args.data, args.data_root)
    torch.manual_seed(0)
    model = build_model(args.arch, data.num_features, data.num_classes)
    hp = TRAIN_DEFAULTS[args.arch]
    train_node_classifier(
        model, data, epochs=hp["epochs"], lr=hp["lr"], weight_decay=hp["weight_decay"], seed=0
    )
    print(f"{args.arch} on {data.name}, torch threads {torch.get_num_threads()}, median of {args.repeats}")
    print("| policy | bits | compile seconds (median) | min | max |")
    print("|---|---|---|---|---|")
    for item in args.policies.split(","):
        policy, bits = item.split(":")
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            compiled = qg_compile(model, data, policy=policy, bits=int(bits))
            with tempfile.TemporaryDirectory() as tmp:
                compiled.export_onnx(Path(tmp) / "m.onnx", data)
            times.append(time.perf_counter() - start)
        print(
            f"| {policy} | {bits} | {statistics.median(times):.1f} | {min(times):.1f} | {max(times):.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
