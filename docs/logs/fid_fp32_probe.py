"""FP32 recipe probe: arch, dataset, seeds, overrides -> val/test per seed."""
import sys, json, statistics, torch, warnings
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
from quantgraph.data import load_dataset
from quantgraph.models import build_model
from quantgraph.training import train_node_classifier
arch, ds, nseeds = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
norm = cfg.pop("norm", True)
model_cfg = cfg.pop("model", {})
data = load_dataset(ds, "/work/shared/data")
if norm:
    data.x = data.x / data.x.sum(-1, keepdim=True).clamp(min=1)
vals, tests = [], []
for s in range(nseeds):
    torch.manual_seed(s)
    m = build_model(arch, data.num_features, data.num_classes, **model_cfg)
    r = train_node_classifier(m, data, seed=s, **cfg)
    vals.append(r.val_acc*100); tests.append(r.test_acc*100)
    print(f"  seed {s}: val {r.val_acc*100:.1f} test {r.test_acc*100:.1f} best_epoch {r.best_epoch} ran {r.epochs_run} {r.seconds:.0f}s", flush=True)
print(f"{arch} {ds} norm={norm} {model_cfg} {cfg}: val {statistics.fmean(vals):.2f} test {statistics.fmean(tests):.2f} ± {statistics.stdev(tests) if len(tests)>1 else 0:.2f}", flush=True)
