"""bitsandbytes quantization config for QLoRA (works on CPU with bitsandbytes 0.50)."""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import QuantizationSpec


def bnb_config(spec: QuantizationSpec, dtype: Any) -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    compute = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(
        spec.compute_dtype, dtype
    )
    if spec.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.type,
        bnb_4bit_use_double_quant=spec.double_quant,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=compute,
    )
