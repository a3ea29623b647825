"""Label-free PTQ probe: train a zoo model per seed, compile it with several calibration variants, print the
IR test accuracy of each (the ONNX export equals the IR; the table rows use tools/reproduce.py)."""
import sys, warnings, statistics, torch
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
sys.path.insert(0, "tools")
from reproduce import train
from quantgraph.data.task import load_task
from quantgraph.compiler import compile as qg_compile

arch, ds, seeds = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
bits_list = [int(b) for b in (sys.argv[4] if len(sys.argv) > 4 else "8").split(",")]
PTQ = ["canonicalize", "tag-roles", "annotate", "calibrate", "insert-qdq"]
PG = ["canonicalize", "tag-roles", "annotate", "degree-buckets", "calibrate", "insert-qdq"]
VARIANTS = {
    "minmax": (PTQ, {}),
    "rmse": (PTQ, {"calibration": "relative-mse"}),
    "mse": (PTQ, {"calibration": "mse"}),
    "pg-minmax": (PG, {}),
    "pg-rmse": (PG, {"calibration": "relative-mse"}),
    "pg-mse": (PG, {"calibration": "mse"}),
    "pg-rmse-agg": (PG, {"calibration": "relative-mse", "group_roles": "aggregation"}),
    "pg-rmse-all": (PG, {"calibration": "relative-mse", "group_roles": "aggregation,update,linear_out"}),
}
only = sys.argv[5].split(",") if len(sys.argv) > 5 else list(VARIANTS)
task = load_task(ds, "/work/shared/data/planetoid")
res = {}
for seed in seeds:
    model = train(arch, task, seed)
    line = {}
    for bits in bits_list:
        for name in only:
            pipe, opts = VARIANTS[name]
            c = qg_compile(model, task.data, policy="minmax", bits=bits, pipeline=pipe, options={**opts, "seed": seed})
            acc = c.report["accuracy"]
            line.setdefault("fp32", round(100 * acc["fp32"], 1))
            line[f"{name}-{bits}"] = round(100 * acc["quantized"], 1)
            res.setdefault(f"{name}-{bits}", []).append(acc["quantized"] - acc["fp32"])
    print(f"{ds} {arch} seed {seed}: {line}", flush=True)
for k, v in res.items():
    print(f"{k}: mean delta {100*statistics.fmean(v):+.2f} over {len(v)}", flush=True)
