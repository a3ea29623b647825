"""Probe: MixQ at one lambda on one seed; prints each point's layer, role, node, bits, elements, probabilities.

Usage (from the repository root): python docs/logs/probe12_mixq_points.py DATASET ARCH SEED LAMBDA [key=value ...]
Data root: $QUANTGRAPH_PLANETOID_ROOT, default ../shared/data/planetoid.
"""

import os
import sys
import tempfile
from pathlib import Path

sys.path[:0] = ["tools", "."]
import reproduce as r  # noqa: E402
import torch  # noqa: E402

from quantgraph.data.task import load_task  # noqa: E402

dataset, arch, seed, lam = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
extra = dict(kv.split("=", 1) for kv in sys.argv[5:])
torch.set_num_threads(1)
task = load_task(dataset, os.environ.get("QUANTGRAPH_PLANETOID_ROOT", "../shared/data/planetoid"))
model = r.train(arch, task, seed)
with tempfile.TemporaryDirectory() as tmp:
    options = {"lambda": lam, "seed": seed, **extra}
    compiled = r._compile_exported(model, task, Path(tmp), "mixq", options, backend="onnx-int")
report = compiled.report
print("acc", report["accuracy"])
for p in report["mixq"]["points"]:
    print(p["layer"], p["role"], p["node"], p["bits"], p["elements"], p["probabilities"])
print("avg", report["mixq"]["average_bits"], "search_val", report["mixq"]["search_val_acc"])
