#!/usr/bin/env bash
# Measure the README's timing claims on this machine and print lines to paste into the README.
#
# Run it on an idle machine, from the repository root, in the project's virtual environment:
#   bash tools/time_readme.sh                 # every claim (the whole test run and the MixQ compile: ~10+ min)
#   SKIP="suite mixq" bash tools/time_readme.sh   # only the cheap ones (help, demo, quick subset)
#   REPEATS=5 bash tools/time_readme.sh       # more repeats of the cheap claims (default 3)
# Each claim is timed with /usr/bin/time (wall seconds and user CPU seconds); claims that are cheap are
# repeated and the median is printed. The load average before each measurement is printed beside it:
# a figure measured at a load above ~1 on this 2-core machine is not an idle figure.
# Data: $QUANTGRAPH_DATA_ROOT (default ../shared/data, as the README's test section says).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export QUANTGRAPH_DATA_ROOT="${QUANTGRAPH_DATA_ROOT:-$repo/../shared/data}"
if [[ ! -d $QUANTGRAPH_DATA_ROOT/planetoid ]]; then  # without the data the Cora tests skip and the times lie
    echo "time_readme: no planetoid/ under QUANTGRAPH_DATA_ROOT=$QUANTGRAPH_DATA_ROOT; export it (e.g. /work/shared/data)" >&2
    exit 2
fi
REPEATS="${REPEATS:-3}"
SKIP="${SKIP:-}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
qg=(python -m quantgraph.cli)
commit=$(git describe --always --dirty 2>/dev/null || echo "?")
day=$(date -u +%Y-%m-%d)
cores=$(nproc)

load() { cut -d' ' -f1 /proc/loadavg; }
skipped() { [[ " $SKIP " == *" $1 "* ]]; }

# median of the numbers on stdin
median() { sort -g | awk '{v[NR]=$1} END {if (NR % 2) print v[(NR+1)/2]; else printf "%.2f\n", (v[NR/2]+v[NR/2+1])/2}'; }

# measure NAME N CMD...: run CMD N times; sets WALL, USER (medians), LOADS (load average before each run)
measure() {
    local name=$1 n=$2
    shift 2
    : >"$work/$name.times"
    LOADS=""
    for ((i = 1; i <= n; i++)); do
        LOADS+="$(load) "
        local rc=0
        /usr/bin/time -f "%e %U" -o "$work/$name.t" "$@" >"$work/$name.out" 2>"$work/$name.err" || rc=$?
        if ((rc != 0)) && [[ $name != suite ]]; then  # a failing test still times the suite; anything else stops
            echo "time_readme: '$*' failed (exit $rc); its output ends:" >&2
            tail -5 "$work/$name.err" "$work/$name.out" >&2
            exit 1
        fi
        tail -1 "$work/$name.t" >>"$work/$name.times"
    done
    WALL=$(cut -d' ' -f1 "$work/$name.times" | median)
    USER=$(cut -d' ' -f2 "$work/$name.times" | median)
    LOADS=${LOADS% }
}

# what each figure is: "median of N" or "one run"
runs() { if (($1 > 1)); then echo "median of $1 runs"; else echo "one run"; fi; }

echo "# measured on $day, commit $commit, $cores cores, $(python -c 'import torch; print("torch", torch.__version__)')"
echo "# load average before each run is in [brackets]; paste a line only if those are near 0"

if ! skipped help; then
    measure help 5 "${qg[@]}" --help
    echo "- \`time quantgraph --help\`: ${WALL} s wall, ${USER} s CPU ($(runs 5), load [$LOADS])"
fi

if ! skipped demo; then
    measure demo "$REPEATS" "${qg[@]}" demo
    echo "- \`/usr/bin/time -f \"%e s wall, %U s user\" quantgraph demo\`: ${WALL} s wall, ${USER} s CPU ($(runs "$REPEATS"), load [$LOADS])"
fi

if ! skipped quick; then
    measure quick "$REPEATS" python -m pytest -q -p no:cacheprovider tests/test_canonicalize.py tests/test_data.py
    summary=$(grep -E "passed|failed" "$work/quick.out" | tail -1)
    echo "- quick subset \`python -m pytest -q tests/test_canonicalize.py tests/test_data.py\`: ${WALL} s wall, ${USER} s CPU ($(runs "$REPEATS"), load [$LOADS]; $summary)"
fi

if ! skipped mixq; then
    ckpt="$work/gcn_cora.pt"
    "${qg[@]}" train --arch gcn --data cora --data-root "$QUANTGRAPH_DATA_ROOT/planetoid" -o "$ckpt" --quiet
    measure mixq 1 "${qg[@]}" compile "$ckpt" --data cora --data-root "$QUANTGRAPH_DATA_ROOT/planetoid" \
        --policy mixq --backend onnx-int -o "$work/m.onnx" --report "$work/mixq.json"
    stages=$(grep -E "pass (search-bits|train-qat)" "$work/mixq.err" | sed -E 's/^quantgraph: pass //; s/ +/ /g' | paste -sd, - | sed 's/,/, /g')
    echo "- MixQ on Cora \`quantgraph compile gcn_cora.pt --data cora ... --policy mixq --backend onnx-int -o m.onnx --report mixq.json\`: ${WALL} s wall, ${USER} s CPU (one run, load [$LOADS]; stages: $stages)"
fi

if ! skipped suite; then
    measure suite 1 python -m pytest -q -p no:cacheprovider
    summary=$(grep -E "passed|failed" "$work/suite.out" | tail -1)
    echo "- whole default run \`python -m pytest -q\`: ${WALL} s wall, ${USER} s CPU (one run, load [$LOADS]; $summary)"
fi
