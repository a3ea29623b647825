# trains (or loads from /tmp/fid/) the zoo model of one seed; mkdir -p /tmp/fid first
import sys, warnings, torch, os
warnings.filterwarnings("ignore"); torch.set_num_threads(1)
sys.path.insert(0, "tools")
from reproduce import train
from quantgraph.data.task import load_task
from quantgraph.compiler import compile as qg_compile
from quantgraph.ir.roles import QUANTIZABLE_ROLES
arch, ds, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
task = load_task(ds, "/work/shared/data/planetoid")
path = f"/tmp/fid/{arch}_{ds}_{seed}.pt"
if os.path.exists(path):
    model = torch.load(path, weights_only=False)
else:
    model = train(arch, task, seed); torch.save(model, path)
roles = [r.value for r in QUANTIZABLE_ROLES]
cal = sys.argv[4] if len(sys.argv) > 4 else "relative-mse"
PG = ["canonicalize", "tag-roles", "annotate", "degree-buckets", "calibrate", "insert-qdq"]
for r in roles:
    skip = ",".join(x for x in roles if x != r)
    try:
        c = qg_compile(model, task.data, policy="minmax", bits=8, options={"calibration": cal, "skip_roles": skip})
        a = c.report["accuracy"]
        pts = [k for k, q in c.report["quantization"].items()]
        print(r, round(100*a["fp32"],1), round(100*a["quantized"],1), pts, flush=True)
    except Exception as e:
        print(r, "ERR", e)
