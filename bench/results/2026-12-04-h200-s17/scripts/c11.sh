#!/bin/bash
# Session 17 call 11: varlen (prefill) kernel reading one cache block per load, against the tree's, one process.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
timeout 70 python3 _gpu/varlen_ab.py $OUT/r/varlen.json > $OUT/r/varlen.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
