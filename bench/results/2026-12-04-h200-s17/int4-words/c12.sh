#!/bin/bash
# Next session: the int4 GEMV prototype against the tree's, one call (~1 minute of compiles and timings).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
timeout 200 python3 bench/results/2026-12-04-h200-s17/int4-words/w4_ab.py $OUT/r/w4.json > $OUT/r/w4.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
