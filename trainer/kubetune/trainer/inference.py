"""Greedy answers from a base model (+ adapter), with the same template the training used."""

from __future__ import annotations

from pathlib import Path

from kubetune.api.trainer_config import RuntimeSpec, TrainerConfig
from kubetune.api.v1alpha1 import FineTuneJobSpec
from kubetune.trainer.data.templates import get_template
from kubetune.trainer.models.loader import load_tokenizer, resolve_model
from kubetune.trainer.storage.fetch import fetch


def generate_answers(
    model_uri: str,
    prompts: list[str],
    *,
    adapter: str | None = None,
    template: str | None = None,
    system: str = "",
    max_new_tokens: int = 48,
    cache_dir: Path,
    work_dir: Path = Path("."),
) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM

    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"source": model_uri, "template": template},
            "datasets": [{"name": "none", "source": "file:///dev/null"}],
        }
    )
    config = TrainerConfig(
        spec=spec,
        runtime=RuntimeSpec(
            job_name="chat",
            output_uri="file:///dev/null",
            work_dir=str(work_dir),
            cache_dir=str(cache_dir),
            scratch_dir=str(cache_dir / "chat"),
        ),
    )
    ref = resolve_model(config)
    tokenizer = load_tokenizer(ref)
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        adapter_path = fetch(adapter, field="--adapter", work_dir=work_dir, cache_dir=cache_dir, kind="model")
        model = PeftModel.from_pretrained(model, adapter_path)
    model.eval()
    tmpl = get_template(template, tokenizer)
    answers = []
    for prompt in prompts:
        text = tmpl.prompt_text([{"role": "user", "content": prompt}], system, "")
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(
                **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        answers.append(tokenizer.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return answers
