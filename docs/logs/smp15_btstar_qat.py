import os, sys, torch
from quantgraph.data import load_dataset
from quantgraph.models import TRAIN_DEFAULTS, build_model
from quantgraph.training import train_node_classifier
from quantgraph.compiler import compile as qg_compile
torch.set_num_threads(1)
d = load_dataset("cora", os.environ["QUANTGRAPH_DATA_ROOT"])
torch.manual_seed(0)
m = build_model("smp", d.num_features, d.num_classes)
hp = TRAIN_DEFAULTS["smp"]
train_node_classifier(m, d, epochs=hp["epochs"], lr=hp["lr"], weight_decay=hp["weight_decay"], seed=0)
for bt in sys.argv[1:]:
    c = qg_compile(m, d, policy="smp", bits=2, options={"smp_bt": bt})
    out = c.run(d.inputs())
    out = out[0] if isinstance(out, (tuple, list)) else out
    val = float((out.argmax(-1)[d.val_mask] == d.y[d.val_mask]).float().mean())
    print(bt, "qat", c.report["qat"], "converted val", val, c.report["accuracy"], flush=True)
