"""Grid over Degree-Quant fine-tuning options for one architecture/dataset; selection on validation only.

usage: python tune12_dq_probe.py DATASET ARCH BITS SEEDS GRID_JSON
GRID_JSON: a JSON list of option dicts, e.g. '[{}, {"select": "loss"}, {"epochs": 300}]'.
Prints one JSON line per (seed, option set): best validation accuracy, best epoch, and the fake-quant
test accuracy (recorded for the record, never used to choose).
"""
import json, sys
import torch
sys.path.insert(0, "/work/main/tools")
import reproduce as R
from quantgraph.compiler import compile as qg_compile
from quantgraph.data.task import load_task

torch.set_num_threads(1)
dataset, arch, bits = sys.argv[1], sys.argv[2], int(sys.argv[3])
seeds = [int(s) for s in sys.argv[4].split(",")]
grid = json.loads(sys.argv[5])
task = load_task(dataset, root="/work/shared/data/planetoid")
for seed in seeds:
    model = R.train(arch, task, seed)
    for g in grid:
        base = R.FINE_TUNE_OVERRIDES.get((arch, "degree-quant", bits), {})
        c = qg_compile(model, task.data, policy="degree-quant", options={**base, **g, "seed": seed}, bits=bits,
                       calibration=task.calibration(), task_data=task.task_data())
        q = c.report["qat"]
        best = next((h for h in q["history"] if int(h["epoch"]) == q["best_epoch"]), {})
        print(json.dumps({"dataset": dataset, "arch": arch, "seed": seed, "bits": bits, **g, "val": q["val_acc"],
                          "val_loss": best.get("val_loss"), "best_epoch": q["best_epoch"], "secs": q["seconds"],
                          "test_fq": c.report.get("accuracy", {}).get("quantized")}), flush=True)
