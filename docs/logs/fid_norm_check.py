"""Normalised GCN/GAT on Cora: every policy finite, ONNX/onnx-int/native equal the IR, no point in the normalisation."""
import math, sys, tempfile, time
OUT = tempfile.mkdtemp()
import torch
from quantgraph.compiler import compile as qcompile
from quantgraph.data.planetoid import load_planetoid
from quantgraph.models import build_model
from quantgraph.training import train_node_classifier
from quantgraph.ir.meta import ROLE_KEY, QSPEC_KEY
torch.set_num_threads(1)
arch = sys.argv[1] if len(sys.argv) > 1 else "gcn"
data = load_planetoid("cora", "/work/shared/data/planetoid")
torch.manual_seed(0)
m = build_model(arch, data.x.shape[1], int(data.y.max()) + 1, normalize_features=True)
r = train_node_classifier(m, data, epochs=100 if arch == "gcn" else 200, lr=0.01 if arch == "gcn" else 0.005, weight_decay=5e-4, seed=0)
m.eval()
print(arch, "fp32 trained", r.best_epoch, flush=True)
sys.path.insert(0, ".")
import tests.plugins.lsq_policy  # noqa
for policy, backend, opts in [("minmax", "onnx-qdq", {}), ("minmax", "onnx-int", {}), ("minmax", "native", {}),
                              ("degree-quant", "onnx-qdq", {"epochs": 10}), ("qat", "onnx-qdq", {"epochs": 10}),
                              ("mixq", "onnx-qdq", {"epochs": 5, "search_epochs": 5}), ("lsq-plugin", "onnx-qdq", {"epochs": 10})]:
    t = time.time()
    for bits in (8, 4):
        c = qcompile(m, data, policy=policy, bits=bits, backend=backend, options=opts)
        pts = [n for n in c.graph_module.graph.nodes if QSPEC_KEY in n.meta]
        pre = [n.name for n in c.graph_module.graph.nodes if n.meta.get(ROLE_KEY) == "preprocess" and QSPEC_KEY in n.meta]
        inp = [n.name for n in (c.qdq_module or c.graph_module).graph.nodes if n.meta.get(ROLE_KEY) == "input" and QSPEC_KEY in n.meta]
        logits = c.run(data)
        acc = c.report["accuracy"]
        path = f"{OUT}/m_{arch}_{policy}_{backend}_{bits}." + ("qgn" if backend == "native" else "onnx")
        ex = c.export(path)
        print(policy, backend, bits, "fp32", acc["fp32"], "q", acc["quantized"], "finite", bool(torch.isfinite(logits).all()),
              "pre_points", pre, "input_points", inp, "export", {k: v for k, v in ex.items() if "agree" in k or "max" in k or "acc" in k},
              f"{time.time()-t:.0f}s", flush=True)
