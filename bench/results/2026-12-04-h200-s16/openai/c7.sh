#!/bin/bash
# Session 16 call 7: the OpenAI front on the 16 host cores with lengths spread per request (streams drift apart
# after the first wave), 2 and 4 front workers.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/client:$PWD || exit 1
sed -i 's/^if _version_not_supported:/if False:/' /tmp/site/tritonclient/grpc/service_pb2_grpc.py
nproc > $OUT/r/nproc.txt
timeout 150 python3 -m bench.openai_overhead --concurrency 64,256 --tokens 64 --tokens-spread 0.5 --step-ms 15 \
  --waves 6 --repeats 3 --streams-per-client 64 --front-workers 2 --work /tmp/oai-work --out $OUT/r/spread-w2 \
  > $OUT/r/spread-w2.log 2>&1
timeout 120 python3 -m bench.openai_overhead --concurrency 64,256 --tokens 64 --tokens-spread 0.5 --step-ms 15 \
  --waves 6 --repeats 2 --streams-per-client 64 --front-workers 4 --work /tmp/oai-work --out $OUT/r/spread-w4 \
  > $OUT/r/spread-w4.log 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
