# needs the model saved by fid_ptq_diag_roles.py (same arch, dataset, seed) in /tmp/fid/
import sys, warnings, torch, os
warnings.filterwarnings("ignore"); torch.set_num_threads(1)
from quantgraph.data.task import load_task
from quantgraph.compiler import compile as qg_compile
arch, ds, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
bits = int(sys.argv[4]) if len(sys.argv) > 4 else 8
task = load_task(ds, "/work/shared/data/planetoid")
model = torch.load(f"/tmp/fid/{arch}_{ds}_{seed}.pt", weights_only=False)
PG = ["canonicalize", "tag-roles", "annotate", "degree-buckets", "calibrate", "insert-qdq"]
for cal in ["minmax", "relative-mse", "mse"]:
    for roles in ["aggregation,update,output", "aggregation,update,output,linear_out", "aggregation,update,output,linear_out,message"]:
        c = qg_compile(model, task.data, policy="minmax", bits=bits, pipeline=PG, options={"calibration": cal, "group_roles": roles})
        a = c.report["accuracy"]
        print(bits, cal, roles, round(100*a["fp32"],1), round(100*a["quantized"],1), flush=True)
