"""Chat templates: render a canonical example into (prompt text, response text) turns.

The default is the tokenizer's own Jinja chat template. A conversation is rendered once, whole,
with the vendor's Jinja (so the text is exactly what the vendor's template produces), and the
assistant turns are found with the ``{% generation %}`` markers of TRL's training variant of that
template (``trl/chat_templates/*_training.jinja``, see :func:`training_variant`). Templates that
rewrite earlier turns when a turn is added (Qwen3 drops the think block of earlier answers) thus
keep every multi-turn row. Templates TRL does not know are rendered incrementally, as before.

Named templates: the LLaMA-Factory-style families in ``TEMPLATES`` (format strings), and the vendors'
own Jinja shipped with TRL in ``VENDOR_TEMPLATES`` (``qwen3``, ``llama3.1``, ``gemma3``, ...). Every
template says what Jinja reproduces its training format (:attr:`Template.chat_template`): the runner
writes it into the saved tokenizer, so vLLM/TGI serve the model with the prompt format it learned.
Unknown names fail loudly.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from kubetune.trainer.data.schema import ASSISTANT, FUNCTION, OBSERVATION, USER, Message, RowError

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

    @property
    def chat_template(self) -> str | None:
        """A Jinja chat template that renders what this template trains on (written into the saved tokenizer)."""
        return None


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
    trim: bool = False
    """Strip each message's text, as the vendor's Jinja does (``message['content'] | trim``: Llama 3, Gemma)."""
    suffix: str = ""
    """Text after the last answer of a conversation (Phi-3 ends a conversation with ``{eos}``)."""

    def _fmt(self, fmt: str, content: str) -> str:
        return fmt.replace("{eos}", self.eos).replace("{content}", content)

    def _render(self, m: Message, before: str = "") -> str:
        fmt = {
            USER: self.user,
            ASSISTANT: self.assistant,
            OBSERVATION: self.observation,
            FUNCTION: self.function or self.assistant,
        }[m["role"]]
        text = before + m["content"]
        return self._fmt(fmt, text.strip() if self.trim else text)

    def turns(self, prompt: list[Message], response: Message, system: str, tools: str) -> list[Turn]:
        messages = [*prompt, response]
        system = _system_with_tools(system or self.default_system, tools)
        if self.trim and not self.system_in_user:
            system = system.strip()
        system_text = self._fmt(self.system_fmt, system) if system else ""
        out: list[Turn] = []
        for i in range(0, len(messages), 2):
            if i == 0 and self.system_in_user:
                source = self.prefix + self._render(messages[0], system_text)
            elif i == 0:
                source = self.prefix + system_text + self._render(messages[0])
            else:
                source = self._render(messages[i])
            out.append((source, self._render(messages[i + 1])))
        if self.suffix:
            source, target = out[-1]
            out[-1] = (source, target + self._fmt(self.suffix, ""))
        return out

    def fingerprint(self) -> str:
        return repr(self)

    @property
    def chat_template(self) -> str:
        """The same format as Jinja (``system``/``user``/``assistant``/``tool`` roles), for the saved tokenizer."""

        def lit(text: str) -> str:
            return json.dumps(text, ensure_ascii=False)

        def piece(fmt: str, var: str) -> str:
            head, found, tail = fmt.replace("{eos}", self.eos).partition("{content}")
            return f"{lit(head)} + {var} + {lit(tail)}" if found else lit(head)

        trim = "true" if self.trim else "false"
        system_in_user = "true" if self.system_in_user else "false"
        trim_system = "true" if self.trim and not self.system_in_user else "false"
        function = self.function or self.assistant
        return (
            f"{{%- set system = {lit(self.default_system)} -%}}"
            "{%- set msgs = messages -%}"
            "{%- if messages and messages[0].role == 'system' -%}"
            "{%- set system = messages[0].content -%}{%- set msgs = messages[1:] -%}{%- endif -%}"
            f"{{%- if {trim_system} -%}}{{%- set system = system | trim -%}}{{%- endif -%}}"
            f"{{{{- {lit(self.prefix)} -}}}}"
            f"{{%- if system and not {system_in_user} -%}}{{{{- {piece(self.system_fmt, 'system')} -}}}}{{%- endif -%}}"
            "{%- for m in msgs -%}"
            "{%- set c = m.content -%}"
            f"{{%- if loop.first and system and {system_in_user} -%}}"
            f"{{%- set c = {piece(self.system_fmt, 'system')} + c -%}}{{%- endif -%}}"
            f"{{%- if {trim} -%}}{{%- set c = c | trim -%}}{{%- endif -%}}"
            "{%- if m.role == 'user' -%}"
            f"{{{{- {piece(self.user, 'c')} -}}}}"
            "{%- elif m.role == 'assistant' -%}"
            f"{{{{- {piece(self.assistant, 'c')} -}}}}"
            f"{{%- if loop.last -%}}{{{{- {lit(self._fmt(self.suffix, ''))} -}}}}{{%- endif -%}}"
            "{%- elif m.role in ('tool', 'observation', 'ipython') -%}"
            f"{{{{- {piece(self.observation, 'c')} -}}}}"
            "{%- elif m.role == 'function' -%}"
            f"{{{{- {piece(function, 'c')} -}}}}"
            "{%- endif -%}"
            "{%- endfor -%}"
        )


@cache
def _trl_templates() -> Path | None:
    """TRL's folder of vendor chat templates and their training variants (found without importing trl)."""
    import importlib.util

    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "chat_templates"
    return folder if folder.is_dir() else None


@cache
def _training_variants() -> dict[str, str]:
    """Vendor template text → TRL's training variant (prefix-preserving, with ``{% generation %}`` markers)."""
    folder = _trl_templates()
    if folder is None:
        return {}
    out = {}
    for training in sorted(folder.glob("*_training.jinja")):
        original = training.with_name(training.name.removesuffix("_training.jinja") + ".jinja")
        if original.is_file():
            out[original.read_text(encoding="utf-8")] = training.read_text(encoding="utf-8")
    return out


def has_generation_markers(chat_template: str) -> bool:
    import re

    return re.search(r"\{%-?\s*generation\s*-?%\}", chat_template) is not None


def training_variant(chat_template: str) -> str | None:
    """The template that marks assistant output for ``chat_template``: itself when it has ``{% generation %}``
    markers, else TRL's training variant of that vendor template (what ``trl.chat_template_utils.
    get_training_chat_template`` returns), else ``None``."""
    if has_generation_markers(chat_template):
        return chat_template
    return _training_variants().get(chat_template)


def vendor_template(name: str) -> str:
    """The text of a vendor chat template shipped with TRL (``qwen3``, ``llama3_1``, ...)."""
    folder = _trl_templates()
    path = folder / f"{name}.jinja" if folder is not None else None
    if path is None or not path.is_file():
        raise ValueError(f"TRL ships no chat template {name!r}")
    return path.read_text(encoding="utf-8")


def _merge_adjacent(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return out


def _map_spans(source: str, target: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character spans of ``source`` carried over to ``target`` (the same text with local edits)."""
    matcher = difflib.SequenceMatcher(None, source, target, autojunk=False)
    blocks = matcher.get_matching_blocks()

    def carry(pos: int, *, end: bool) -> int:
        for a, b, size in blocks:
            if a <= pos < a + size or (end and a < pos <= a + size):
                return b + (pos - a)
        # inside text the target does not have: snap to the next (start) or previous (end) matched character
        if end:
            return max((b + size for a, b, size in blocks if size and a + size <= pos), default=0)
        return min((b for a, b, size in blocks if size and a >= pos), default=len(target))

    return [(carry(start, end=False), carry(end, end=True)) for start, end in spans]


class JinjaTemplate(Template):
    """A Jinja chat template (the tokenizer's, or a vendor's shipped with TRL).

    With a training variant (:func:`training_variant`) a conversation is rendered once, whole, with the
    vendor's template, and split at the assistant turns its variant marks; without one it is rendered
    turn by turn, and a template that rewrites earlier turns drops the row.
    """

    name = "tokenizer"

    def __init__(
        self,
        tokenizer: Any,
        source: str | None = None,
        name: str = "tokenizer",
        special_tokens: dict[str, str] | None = None,
    ):
        template = source if source is not None else getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):
            template = template.get("default")
        if not template:
            raise ValueError("the tokenizer has no chat template; set spec.model.template (e.g. chatml)")
        self.tokenizer = tokenizer
        self.name = name
        self.source: str = template
        self.training = training_variant(template)
        self.overrides = dict(special_tokens or {})
        self.special_tokens = {**dict(getattr(tokenizer, "special_tokens_map", {}) or {}), **self.overrides}
        self._fold_system: bool | None = None

    def fingerprint(self) -> str:
        return f"{self.name}:{self.source}|{self.training is not None}|{sorted(map(str, self.special_tokens.items()))}"

    @property
    def chat_template(self) -> str:
        # a template given its own special tokens (bos/eos text) keeps them whatever the tokenizer calls them
        sets = "".join(
            f"{{%- set {k} = {json.dumps(v, ensure_ascii=False)} -%}}"
            for k, v in sorted(self.overrides.items())
            if isinstance(v, str)
        )
        return sets + self.source

    def _render(
        self, messages: list[dict[str, str]], generation: bool, template: str | None = None, marks: bool = False
    ) -> tuple[str, list[tuple[int, int]]]:
        from jinja2 import TemplateError
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            texts, spans = render_jinja_template(
                conversations=[messages],
                chat_template=template or self.source,
                add_generation_prompt=generation,
                return_assistant_tokens_mask=marks,
                **self.special_tokens,
            )
        except TemplateError as exc:
            raise RowError("chat template refused the row", str(exc)[:200]) from None
        return texts[0], (spans[0] if marks else [])

    def _messages(self, convo: list[Message], system: str, tools: str) -> list[dict[str, str]]:
        role_of = {USER: "user", ASSISTANT: "assistant", OBSERVATION: "tool", FUNCTION: "assistant"}
        system = _system_with_tools(system, tools)
        messages = [{"role": role_of[m["role"]], "content": m["content"]} for m in convo]
        if system and self._folds_system():
            # the vendor's template has no system role (Gemma): the system text opens the first user turn
            first = messages[0]
            messages[0] = {**first, "content": f"{system}\n\n{first['content']}"}
        elif system:
            messages.insert(0, {"role": "system", "content": system})
        return messages

    def _folds_system(self) -> bool:
        if self._fold_system is None:
            probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
            try:
                self._render(probe, True)
                self._fold_system = False
            except RowError:
                self._fold_system = True
        return self._fold_system

    def prompt_text(self, prompt: list[Message], system: str, tools: str) -> str:
        return self._render(self._messages(prompt, system, tools), True)[0]

    def turns(self, prompt: list[Message], response: Message, system: str, tools: str) -> list[Turn]:
        convo = [*prompt, response]
        messages = self._messages(convo, system, tools)
        if self.training is None:
            return self._incremental(messages)
        text = self._render(messages, False)[0]
        marked, spans = self._render(messages, False, self.training, marks=True)
        spans = _merge_adjacent(spans)
        if marked != text:  # the training variant renders earlier turns differently: carry its marks over
            spans = _merge_adjacent(_map_spans(marked, text, spans))
        answers = len(convo) // 2
        if len(spans) != answers:
            raise RowError(
                "assistant turns not found",
                f"the chat template marks {len(spans)} assistant turn(s); the row has {answers}",
            )
        out: list[Turn] = []
        done = 0
        for start, end in spans:
            out.append((text[done:start], text[start:end]))
            done = end
        if done < len(text):  # text after the last answer (a closing newline or eos) belongs to the answer
            source, target = out[-1]
            out[-1] = (source, target + text[done:])
        return out

    def _incremental(self, messages: list[dict[str, str]]) -> list[Turn]:
        system = 1 if messages and messages[0]["role"] == "system" else 0
        out: list[Turn] = []
        done = ""  # turn 0 carries the system block
        for i in range(system, len(messages), 2):
            with_prompt = self._render(messages[: i + 1], True)[0]
            full = self._render(messages[: i + 2], False)[0]
            if not with_prompt.startswith(done) or not full.startswith(with_prompt):
                raise RowError(
                    "template not incremental", "the chat template rewrites earlier turns; pick a named template"
                )
            out.append((with_prompt[len(done) :], full[len(with_prompt) :]))
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
        trim=True,
    )


def _mistral() -> FormatTemplate:
    return FormatTemplate(
        name="mistral",
        prefix="<s>",
        system_fmt="{content}\n\n",
        system_in_user=True,
        user="[INST] {content}[/INST]",
        assistant="{content}</s>",
        observation="[TOOL_RESULTS] {content}[/TOOL_RESULTS]",
        function="[TOOL_CALLS] {content}</s>",
        stop="</s>",
    )


def _gemma() -> FormatTemplate:
    return FormatTemplate(
        name="gemma",
        prefix="<bos>",
        system_fmt="{content}\n\n",
        system_in_user=True,
        user="<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
        assistant="{content}<end_of_turn>\n",
        observation="<start_of_turn>tool\n{content}<end_of_turn>\n<start_of_turn>model\n",
        stop="<end_of_turn>",
        trim=True,
    )


def _phi() -> FormatTemplate:
    return FormatTemplate(
        name="phi",
        system_fmt="<|system|>\n{content}<|end|>\n",
        user="<|user|>\n{content}<|end|>\n<|assistant|>\n",
        assistant="{content}<|end|>\n",
        observation="<|tool|>\n{content}<|end|>\n<|assistant|>\n",
        stop="<|end|>",
        suffix="{eos}",
    )


def _deepseek() -> FormatTemplate:
    return FormatTemplate(
        name="deepseek",
        prefix="<｜begin▁of▁sentence｜>",
        system_fmt="{content}\n\n",
        user="User: {content}\n\nAssistant:",
        assistant="{content}<｜end▁of▁sentence｜>",
        observation="Observation: {content}\n\nAssistant:",
        stop="<｜end▁of▁sentence｜>",
    )


def _deepseek3() -> FormatTemplate:
    return FormatTemplate(
        name="deepseek3",
        prefix="<｜begin▁of▁sentence｜>",
        system_fmt="{content}",
        user="<｜User｜>{content}<｜Assistant｜>",
        assistant="{content}<｜end▁of▁sentence｜>",
        observation="<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{content}<｜tool▁output▁end｜>"
        "<｜tool▁outputs▁end｜>",
        stop="<｜end▁of▁sentence｜>",
    )


def _default() -> FormatTemplate:
    return FormatTemplate(
        name="default",
        user="Human: {content}{eos}\nAssistant:",
        assistant="{content}{eos}\n",
        system_fmt="System: {content}{eos}\n",
        observation="Observation: {content}{eos}\nAssistant:",
    )


QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."  # Qwen2.5's default

TEMPLATES: dict[str, Callable[[], FormatTemplate]] = {
    "chatml": _chatml,
    "qwen": lambda: _chatml("qwen", QWEN_SYSTEM),
    "llama3": _llama3,
    "mistral": _mistral,
    "gemma": _gemma,
    "phi": _phi,
    "deepseek": _deepseek,
    "deepseek3": _deepseek3,
    "default": _default,
}


# The vendors' own Jinja, as shipped with TRL (``trl/chat_templates/<file>.jinja``): name → file.
VENDOR_TEMPLATES: dict[str, str] = {
    "qwen2.5": "qwen2_5",
    "qwen3": "qwen3",
    "qwen3-instruct-2507": "qwen3_instruct_2507",
    "llama3.1": "llama3_1",
    "llama3.2": "llama3_2",
    "gemma3": "gemma3",
    "phi3.5": "phi3_5",
    "deepseek-v3": "deepseekv3",
    "deepseek-r1": "deepseek_r1_distill",
    "glm4-moe": "glm4moe",
    "gpt-oss": "gptoss",
    "cohere": "cohere",
    "cohere2": "cohere2",
    "lfm2": "lfm2",
    "nemotron3-nano": "nemotron_3_nano",
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
    if name in VENDOR_TEMPLATES:
        return JinjaTemplate(tokenizer, source=vendor_template(VENDOR_TEMPLATES[name]), name=name)
    if name not in TEMPLATES:
        raise ValueError(
            f"unknown template {name!r}; known: tokenizer, {', '.join(sorted(TEMPLATES))}, "
            f"{', '.join(sorted(VENDOR_TEMPLATES))}"
        )
    return _bind(TEMPLATES[name](), tokenizer)
