import sys, torch
sys.path.insert(0, ".")
import tests.plugins.lsq_policy  # noqa
from quantgraph.compiler import compile as qcompile
from quantgraph.data.planetoid import load_planetoid
from quantgraph.models import build_model
from quantgraph.training import train_node_classifier
torch.set_num_threads(1)
data = load_planetoid("cora", "/work/shared/data/planetoid")
norm = sys.argv[1] == "1"
torch.manual_seed(0)
m = build_model("gat", data.x.shape[1], 7, normalize_features=norm)
train_node_classifier(m, data, epochs=200, lr=0.005, weight_decay=5e-4, seed=0); m.eval()
for policy, bits, opts in [("lsq-plugin", 4, {"epochs": 10}), ("mixq", 8, {"epochs": 5, "search_epochs": 5}), ("qat", 4, {"epochs": 10})]:
    c = qcompile(m, data, policy=policy, bits=bits, options=opts)
    print("norm", norm, policy, bits, c.report["accuracy"], "finite", bool(torch.isfinite(c.run(data)).all()), flush=True)
