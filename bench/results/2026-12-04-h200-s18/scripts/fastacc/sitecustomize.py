"""Experiment only: FAST_ACC=1 makes Fp8Linear's torch._scaled_mm use fast accumulation in this process."""
import os

if os.environ.get("FAST_ACC") == "1":
    import torch

    from llmserve.model.linear import Fp8Linear

    def _scaled_mm(self, xq, xs, dtype):
        y = torch._scaled_mm(xq, self.weight.t(), scale_a=xs, scale_b=self.weight_scale[None, :],
                             out_dtype=torch.bfloat16, use_fast_accum=True).to(dtype)
        return y + self.bias if self.bias is not None else y

    Fp8Linear._scaled_mm = _scaled_mm
    print("sitecustomize: fast accumulation on", flush=True)
