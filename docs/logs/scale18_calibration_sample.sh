#!/bin/bash
# issue 18: ptq INT8 GCN on Cora calibrated on samples of N seeds (2 hops), seed 0
set -e
source /work/venv/bin/activate
export PYTHONPATH=/work/wt/scale18 QUANTGRAPH_DATA_ROOT=/work/shared/data
D=/tmp/s18
cd $D
qg() { python -m quantgraph.cli "$@"; }
[ -f gcn.pt ] || qg train --arch gcn --data cora --seed 0 --quiet -o gcn.pt
for N in 100 500 full; do
  if [ $N = full ]; then flag=(); else flag=(--calibration-sample $N --sample-seed 0); fi
  /usr/bin/time -f "compile N=$N: %e s, peak RSS %M KB" python -m quantgraph.cli compile gcn.pt --data cora --policy ptq --bits 8 "${flag[@]}" -o gcn_$N.onnx --report r_$N.json --quiet
  echo "eval N=$N:"; qg eval gcn_$N.onnx --data cora 2>&1 | tail -3
done
