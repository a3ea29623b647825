"""Probe run 2026-12-03 (seed 0, Cora, 30 QAT epochs): BT* training histories under variants, one at a time.

Run as ``python docs/logs/smp15_btstar_variants.py VARIANT`` with VARIANT one of: skew0 (skewness forced
to 0), alpha_frozen (smp_alpha_lr=0), lr1e-3, official (smp_points=official, also for bt), floor01 (BT*'s
skew with BT's α floor 0.1). Output lines: (epoch, training loss, validation accuracy) every 3 epochs.
"""

import sys

exec(open("docs/logs/smp15_btstar_qat.py").read().split("for bt in")[0])  # noqa: S102 - the trained model
from quantgraph.ir import qlr_quantizer as Q  # noqa: E402

variant = sys.argv[1]
opts: dict = {"epochs": 30}
kinds = ["bt*"]
if variant == "skew0":
    Q.skewness = lambda x: 0.0
elif variant == "alpha_frozen":
    opts["smp_alpha_lr"] = 0.0
elif variant == "lr1e-3":
    opts["lr"] = 0.001
elif variant == "official":
    opts["smp_points"] = "official"
    kinds = ["bt*", "bt"]
elif variant == "floor01":
    orig = Q.QLRQuantizer.initialize

    def init(self, x):
        sk = type(self).skewed
        if sk:
            self.skew.fill_(round(Q.skewness(x)))
        type(self).skewed = False
        try:
            s = self.skew.clone()
            orig(self, x)
            self.skew.copy_(s)
        finally:
            type(self).skewed = sk

    Q.QLRQuantizer.initialize = init
for bt in kinds:
    c = qg_compile(m, d, policy="smp", bits=2, options={"smp_bt": bt, **opts})  # noqa: F821
    hist = [(h["epoch"], round(h["loss"], 3), round(h["val_acc"], 3)) for h in c.report["qat"]["history"][::3]]
    print(bt, variant, hist, flush=True)
