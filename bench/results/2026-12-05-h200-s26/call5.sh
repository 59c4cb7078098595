#!/bin/bash
# Session 26's next call (about 4 minutes; no carry; `bash bench/results/2026-12-05-next-calls/tree.sh _t2 8ba3916`
# first): varlen_inputs.py in 8ba3916 and in this tree, each its own process: the engine's first 4 x 2,048 step
# profiled (trace, varlen launches and their times), layer 0's varlen inputs described and timed alone, then the
# synthetic case. Answers whether the engine's varlen kernel is slower in this tree because of its inputs or of
# what runs around it.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p $OUT/r
nvidia-smi --query-gpu=name --format=csv > $OUT/r/gpu.txt
SCRIPT=$PWD/bench/results/2026-12-05-h200-s26/varlen_inputs.py
for t in _t2 .; do
  n=$(basename $(cd $t && pwd))
  (cd $t && OUT=$OUT/r TREE=$n PYTHONPATH=$PWD timeout 200 python3 $SCRIPT > $OUT/r/inputs-$n.log 2>&1 || true)
done
cd $OUT && tar czf r.tgz r && rm -rf r
