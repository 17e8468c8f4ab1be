"""Chat templates: render a canonical example into (prompt text, response text) turns.

The default is the tokenizer's own Jinja chat template, rendered incrementally so each
turn's text is exactly what the full conversation would contain. Named templates cover
the common families for tokenizers that carry none (or when the user picks one).
Registry ``TEMPLATES`` fails loudly on unknown names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubetune.trainer.data.schema import ASSISTANT, FUNCTION, OBSERVATION, SYSTEM, USER, Message, RowError

Turn = tuple[str, str]  # (prompt side text, response side text)


def tools_text(tools: str) -> str:
    """How tools are described in the system slot (turn 0), for templates without native tool support."""
    if not tools:
        return ""
    try:
        parsed = json.loads(tools)
        tools = json.dumps(parsed, ensure_ascii=False, indent=None)
    except (json.JSONDecodeError, TypeError):
        pass
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n"
        f"You are provided with these function signatures:\n<tools>\n{tools}\n</tools>\n"
        'Call a function with a JSON object {"name": ..., "arguments": ...} inside <tool_call></tool_call>.'
    )


def _system_with_tools(system: str, tools: str) -> str:
    extra = tools_text(tools)
    return "\n\n".join(p for p in (system, extra) if p)


class Template:
    name = "base"
    default_system = ""

    def fingerprint(self) -> str:
        """Identifies the rendering, for the tokenized-data cache key."""
        return self.name

    def turns(self, prompt: list[Message], response: Message, system: str, tools: str) -> list[Turn]:
        raise NotImplementedError

    def prompt_text(self, prompt: list[Message], system: str, tools: str) -> str:
        """Text up to the point where the model starts answering (for generation and prompt-only stages)."""
        turns = self.turns(prompt, {"role": ASSISTANT, "content": ""}, system, tools)
        return "".join(p + r for p, r in turns[:-1]) + turns[-1][0]


@dataclass(kw_only=True)
class FormatTemplate(Template):
    """A template written as per-role format strings (LLaMA-Factory style)."""

    name: str
    user: str
    assistant: str
    system_fmt: str
    observation: str
    function: str = ""
    prefix: str = ""
    default_system: str = ""
    stop: str = ""
    system_in_user: bool = False
    """Put the system text inside the first user turn (LLaMA-Factory's Llama2Template: mistral, gemma)."""
    eos: str = ""
    """Replaces ``{eos}`` in the formats: the tokenizer's eos token, bound by :func:`get_template`."""

    def _render(self, m: Message, before: str = "") -> str:
        fmt = {USER: self.user, ASSISTANT: self.assistant, OBSERVATION: self.observation,
               FUNCTION: self.function or self.assistant}[m["role"]]
        return fmt.replace("{eos}", self.eos).replace("{content}", before + m["content"])

    def turns(self, prompt: list[Message], response: Message, system: str, tools: str) -> list[Turn]:
        messages = [*prompt, response]
        system = _system_with_tools(system or self.default_system, tools)
        system_text = self.system_fmt.replace("{eos}", self.eos).replace("{content}", system) if system else ""
        out: list[Turn] = []
        for i in range(0, len(messages), 2):
            if i == 0 and self.system_in_user:
                source = self.prefix + self._render(messages[0], system_text)
            elif i == 0:
                source = self.prefix + system_text + self._render(messages[0])
            else:
                source = self._render(messages[i])
            out.append((source, self._render(messages[i + 1])))
        return out

    def fingerprint(self) -> str:
        return repr(self)


class JinjaTemplate(Template):
    """The tokenizer's chat template, rendered turn by turn."""

    name = "tokenizer"

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; set spec.model.template (e.g. chatml)")
        self.tokenizer = tokenizer

    def fingerprint(self) -> str:
        return f"tokenizer:{self.tokenizer.chat_template}"

    def _render(self, messages: list[dict[str, str]], generation: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    def turns(self, prompt: list[Message], response: Message, system: str, tools: str) -> list[Turn]:
        role_of = {USER: "user", ASSISTANT: "assistant", OBSERVATION: "tool", FUNCTION: "assistant"}
        messages: list[dict[str, str]] = []
        system = _system_with_tools(system, tools)
        if system:
            messages.append({"role": "system", "content": system})
        convo = [*prompt, response]
        out: list[Turn] = []
        done = ""  # turn 0 carries the system block
        for i in range(0, len(convo), 2):
            messages.append({"role": role_of[convo[i]["role"]], "content": convo[i]["content"]})
            with_prompt = self._render(messages, True)
            messages.append({"role": role_of[convo[i + 1]["role"]], "content": convo[i + 1]["content"]})
            full = self._render(messages, False)
            if not with_prompt.startswith(done) or not full.startswith(with_prompt):
                raise RowError("template not incremental", "the chat template rewrites earlier turns; pick a named template")
            out.append((with_prompt[len(done):], full[len(with_prompt):]))
            done = full
        return out


def _chatml(name: str = "chatml", default_system: str = "") -> FormatTemplate:
    return FormatTemplate(
        name=name,
        user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
        assistant="{content}<|im_end|>\n",
        system_fmt="<|im_start|>system\n{content}<|im_end|>\n",
        observation="<|im_start|>tool\n{content}<|im_end|>\n<|im_start|>assistant\n",
        default_system=default_system,
        stop="<|im_end|>",
    )


def _llama3() -> FormatTemplate:
    head = "<|start_header_id|>{role}<|end_header_id|>\n\n"
    answer = head.format(role="assistant")
    return FormatTemplate(
        name="llama3",
        prefix="<|begin_of_text|>",
        system_fmt=head.format(role="system") + "{content}<|eot_id|>",
        user=head.format(role="user") + "{content}<|eot_id|>" + answer,
        assistant="{content}<|eot_id|>",
        observation=head.format(role="ipython") + "{content}<|eot_id|>" + answer,
        stop="<|eot_id|>",
    )


def _mistral() -> FormatTemplate:
    return FormatTemplate(
        name="mistral", prefix="<s>", system_fmt="{content}\n\n", system_in_user=True,
        user="[INST] {content}[/INST]", assistant="{content}</s>",
        observation="[TOOL_RESULTS] {content}[/TOOL_RESULTS]", function="[TOOL_CALLS] {content}</s>", stop="</s>",
    )


def _gemma() -> FormatTemplate:
    return FormatTemplate(
        name="gemma", prefix="<bos>", system_fmt="{content}\n\n", system_in_user=True,
        user="<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
        assistant="{content}<end_of_turn>\n",
        observation="<start_of_turn>tool\n{content}<end_of_turn>\n<start_of_turn>model\n",
        stop="<end_of_turn>",
    )


def _phi() -> FormatTemplate:
    return FormatTemplate(
        name="phi", system_fmt="<|system|>\n{content}<|end|>\n",
        user="<|user|>\n{content}<|end|>\n<|assistant|>\n", assistant="{content}<|end|>\n",
        observation="<|tool|>\n{content}<|end|>\n<|assistant|>\n", stop="<|end|>",
    )


def _deepseek() -> FormatTemplate:
    return FormatTemplate(
        name="deepseek", prefix="<｜begin▁of▁sentence｜>", system_fmt="{content}\n\n",
        user="User: {content}\n\nAssistant:", assistant="{content}<｜end▁of▁sentence｜>",
        observation="Observation: {content}\n\nAssistant:", stop="<｜end▁of▁sentence｜>",
    )


def _deepseek3() -> FormatTemplate:
    return FormatTemplate(
        name="deepseek3", prefix="<｜begin▁of▁sentence｜>", system_fmt="{content}",
        user="<｜User｜>{content}<｜Assistant｜>", assistant="{content}<｜end▁of▁sentence｜>",
        observation="<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{content}<｜tool▁output▁end｜>"
        "<｜tool▁outputs▁end｜>", stop="<｜end▁of▁sentence｜>",
    )


def _default() -> FormatTemplate:
    return FormatTemplate(
        name="default", user="Human: {content}{eos}\nAssistant:", assistant="{content}{eos}\n",
        system_fmt="System: {content}{eos}\n", observation="Observation: {content}{eos}\nAssistant:",
    )


TEMPLATES: dict[str, Callable[[], FormatTemplate]] = {
    "chatml": _chatml,
    "qwen": lambda: _chatml("qwen", "You are a helpful assistant."),
    "llama3": _llama3,
    "mistral": _mistral,
    "gemma": _gemma,
    "phi": _phi,
    "deepseek": _deepseek,
    "deepseek3": _deepseek3,
    "default": _default,
}


def _bind(template: FormatTemplate, tokenizer: Any) -> FormatTemplate:
    template.eos = getattr(tokenizer, "eos_token", None) or ""
    return template


def get_template(name: str | None, tokenizer: Any) -> Template:
    """``None`` → the tokenizer's chat template (or ``default`` if it has none); a name → that template."""
    if name is None or name == "tokenizer":
        if getattr(tokenizer, "chat_template", None):
            return JinjaTemplate(tokenizer)
        if name == "tokenizer":
            raise ValueError("the tokenizer has no chat template; set spec.model.template")
        return _bind(TEMPLATES["default"](), tokenizer)
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; known: tokenizer, {', '.join(sorted(TEMPLATES))}")
    return _bind(TEMPLATES[name](), tokenizer)


_ = SYSTEM  # re-exported for template authors
