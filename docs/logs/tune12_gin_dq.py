"""Grid over Degree-Quant INT8 fine-tuning settings for the new Cora GIN; validation accuracy only."""
import itertools, json, sys, tempfile
from pathlib import Path
import torch
sys.path.insert(0, "/work/main/tools")
import reproduce as R
from quantgraph.compiler import compile as qg_compile
from quantgraph.data.task import load_task

torch.set_num_threads(1)
dataset = sys.argv[1]
seeds = [int(s) for s in sys.argv[2].split(",")]
bits = int(sys.argv[3]) if len(sys.argv) > 3 else 8
grid = [dict(lr=lr, weight_decay=wd) for lr, wd in itertools.product(*(tuple(float(v) for v in a.split(",")) for a in (sys.argv[4], sys.argv[5])))] if len(sys.argv) > 5 else [dict(lr=lr, weight_decay=wd) for lr, wd in itertools.product((0.0005, 0.001, 0.002, 0.005), (5e-4, 1e-2))]
task = load_task(dataset, root="/work/shared/data/planetoid")
for seed in seeds:
    model = R.train("gin", task, seed)
    for g in grid:
        c = qg_compile(model, task.data, policy="degree-quant", options={**g, "seed": seed}, bits=bits,
                       calibration=task.calibration(), task_data=task.task_data())
        q = c.report["qat"]
        print(json.dumps({"dataset": dataset, "seed": seed, "bits": bits, **g, "val": q["val_acc"], "best_epoch": q["best_epoch"],
                          "test_fq": c.report.get("accuracy", {}).get("fake_quant")}), flush=True)
