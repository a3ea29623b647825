"""Diagnostic: BT* skews per quantizer and accuracy after a short QAT, against BT (seed 0, Cora)."""
import os, sys, torch
from quantgraph.data import load_dataset
from quantgraph.models import TRAIN_DEFAULTS, build_model
from quantgraph.training import train_node_classifier
from quantgraph.compiler import compile as qg_compile
from quantgraph.ir import qlr_quantizer as Q

torch.set_num_threads(1)
d = load_dataset("cora", os.environ["QUANTGRAPH_DATA_ROOT"])
torch.manual_seed(0)
m = build_model("smp", d.num_features, d.num_classes)
hp = TRAIN_DEFAULTS["smp"]
train_node_classifier(m, d, epochs=hp["epochs"], lr=hp["lr"], weight_decay=hp["weight_decay"], seed=0)
orig = Q.QLRQuantizer.initialize
def init(self, x):
    orig(self, x)
    print(f"init {self.kind} bits={self.spec.bits} skew={float(self.skew):g} alpha={float(self.alpha):.2f} "
          f"range=[{float(x.min()):.3g},{float(x.max()):.3g}] numel={x.numel()}", flush=True)
Q.QLRQuantizer.initialize = init
epochs = int(sys.argv[1])
for bt in ("bt", "bt*"):
    c = qg_compile(m, d, policy="smp", bits=2, options={"smp_bt": bt, "epochs": epochs})
    print(bt, epochs, c.report["accuracy"], flush=True)
