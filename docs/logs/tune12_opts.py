"""Validation accuracy of one policy under several option sets (argv: dataset seeds bits policy json-list)."""
import json, sys
import torch
sys.path.insert(0, "/work/main/tools")
import reproduce as R
from quantgraph.compiler import compile as qg_compile
from quantgraph.data.task import load_task

torch.set_num_threads(1)
dataset, seeds, bits, policy = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], int(sys.argv[3]), sys.argv[4]
grid = json.loads(sys.argv[5])
task = load_task(dataset, root="/work/shared/data/planetoid")
for seed in seeds:
    model = R.train("gin", task, seed)
    for g in grid:
        c = qg_compile(model, task.data, policy=policy, options={**g, "seed": seed}, bits=bits,
                       calibration=task.calibration(), task_data=task.task_data())
        q = c.report["qat"]
        print(json.dumps({"dataset": dataset, "seed": seed, "bits": bits, **g, "val": q["val_acc"], "best_epoch": q["best_epoch"]}), flush=True)
