#!/bin/bash
# Issue 20's last target (<= 1 ms added to median TTFT at 256 streams) on the GPU machine's 16 host cores, one
# call (about 9 minutes): the front with 4 and 8 worker processes, request lengths spread (32-96 tokens) and equal
# (64: every wave one burst), 4 repeats a path. Carry [".carry", ".whl"] as docs/performance.md "Reproducing",
# step 4 says (the front's wheels in .whl/).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/client:$PWD PYTHONUNBUFFERED=1 || exit 1
sed -i 's/^if _version_not_supported:/if False:/' /tmp/site/tritonclient/grpc/service_pb2_grpc.py
mkdir -p $OUT/r
for workers in 4 8; do
  timeout 140 python3 -m bench.openai_overhead --concurrency 256 --tokens 64 --tokens-spread 0.5 --step-ms 15 \
    --waves 6 --repeats 4 --streams-per-client 64 --front-workers $workers --work /tmp/oai-work \
    --out $OUT/r/spread-w$workers > $OUT/r/spread-w$workers.log 2>&1
  timeout 140 python3 -m bench.openai_overhead --concurrency 256 --tokens 64 --step-ms 15 \
    --waves 6 --repeats 4 --streams-per-client 64 --front-workers $workers --work /tmp/oai-work \
    --out $OUT/r/equal-w$workers > $OUT/r/equal-w$workers.log 2>&1
done
cd $OUT && tar czf r.tgz r && rm -rf r
