# Sourced by the device scripts (from the repository's root): the environment, $OUT/r with the GPU's name and driver,
# `save` (r.tgz of what is there so far, so a call cut off still returns it) and `start` (the call's clock).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
mkdir -p $OUT/r
save() { (cd $OUT && tar czf r.tgz r); }
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/r/gpu.txt
start=$SECONDS
