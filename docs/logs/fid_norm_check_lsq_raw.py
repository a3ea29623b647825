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
m = build_model("gcn", data.x.shape[1], 7, normalize_features=norm)
train_node_classifier(m, data, epochs=100, lr=0.01, weight_decay=5e-4, seed=0); m.eval()
c = qcompile(m, data, policy="lsq-plugin", bits=4, options={"epochs": 10})
ex = c.export(f"{__import__('tempfile').mkdtemp()}/lsq.onnx")
print("norm", norm, c.report["accuracy"], {k: v for k, v in ex.items() if "agree" in k or "max" in k})
