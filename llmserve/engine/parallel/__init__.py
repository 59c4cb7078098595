"""Tensor-parallel serving of our engine over torch.distributed: rank 0 (the engine's process) schedules and
samples; worker processes it starts each run their shard of every layer on the step inputs rank 0 broadcasts."""
