"""The tokenizer that ships with an artifact carries the chat template the model was trained with.

``spec.model.template: qwen`` (or any named template) trains in that format; without this the saved
tokenizer would keep the base model's template and vLLM/TGI would serve the adapter with another
prompt format. The Jinja comes from :attr:`kubetune.trainer.data.templates.Template.chat_template`:
the vendor's own template (never TRL's training variant: servers do not know ``{% generation %}``),
or the named format written as Jinja.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune.trainer.data.templates import Template


def use_training_template(tokenizer: Any, template: Template) -> Any:
    """Set ``tokenizer.chat_template`` to the template training renders with (before anything is saved)."""
    chat_template = template.chat_template
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def save_tokenizer(tokenizer: Any, template: Template, out: str | Path) -> None:
    use_training_template(tokenizer, template).save_pretrained(str(out))
