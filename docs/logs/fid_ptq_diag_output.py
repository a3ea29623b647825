# needs the model saved by fid_ptq_diag_roles.py (same arch, dataset, seed) in /tmp/fid/
import sys, warnings, torch, os
warnings.filterwarnings("ignore"); torch.set_num_threads(1)
from quantgraph.data.task import load_task
from quantgraph.compiler import compile as qg_compile
from quantgraph.ir.roles import QUANTIZABLE_ROLES
arch, ds, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
task = load_task(ds, "/work/shared/data/planetoid")
model = torch.load(f"/tmp/fid/{arch}_{ds}_{seed}.pt", weights_only=False)
roles = [r.value for r in QUANTIZABLE_ROLES]
PG = ["canonicalize", "tag-roles", "annotate", "degree-buckets", "calibrate", "insert-qdq"]
skip_all_but_out = ",".join(x for x in roles if x != "output")
for name, pipe, opts in [
    ("out minmax", None, {"skip_roles": skip_all_but_out}),
    ("out mse", None, {"skip_roles": skip_all_but_out, "calibration": "mse"}),
    ("out pg-minmax", PG, {"skip_roles": skip_all_but_out, "group_roles": "output"}),
    ("out pg-rmse", PG, {"skip_roles": skip_all_but_out, "group_roles": "output", "calibration": "relative-mse"}),
    ("all rmse, out skipped", None, {"skip_roles": "output", "calibration": "relative-mse"}),
]:
    c = qg_compile(model, task.data, policy="minmax", bits=8, pipeline=pipe, options=opts)
    a = c.report["accuracy"]
    print(name, round(100*a["fp32"],1), round(100*a["quantized"],1), flush=True)
