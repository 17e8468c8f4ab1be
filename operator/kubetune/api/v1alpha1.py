"""The FineTuneJob API, ``kubetune.io/v1alpha1``: the single source of truth.

Python attributes are snake_case; YAML/JSON names are camelCase (``alias_generator``).
The CRD in ``crds/`` is generated from these models by :mod:`kubetune.api.crdgen`.
Cross-field rules live in ``model_validator``s next to the fields they relate, and
raise :class:`SpecProblems` so every problem keeps its own field path.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubetune.api.checks import (
    INT32_MAX,
    K8S_NAME_SCHEMA,
    LABEL_NAME_SCHEMA,
    MAX_NUM_SAMPLES,
    QUANTITY,
    Float,
    Int,
    label_value_problem,
    qualified_name_problem,
    quantity_problem,
    repo_id_problem,
    text_problem,
    uri_shape_problem,
)
from kubetune.api.names import DNS1123_LABEL, check_dns_label, dns_subdomain_problem
from kubetune.api.redact import CREDENTIALS_HINT, credentials_in, redact
from kubetune.api.stages import STAGE_CONTRACTS, Stage

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION: Final = "kubetune.io/v1alpha1"  # f"{GROUP}/{VERSION}", spelled out for the type checker
KIND: Final = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]

DNS_LABEL = DNS1123_LABEL  # use .fullmatch (``$`` matches before a final newline); see kubetune.api.names
# QUANTITY (the resource.Quantity grammar) comes from kubetune.api.checks.
TEMPLATE_NAMES = (
    "tokenizer",
    "chatml",
    "qwen",
    "llama3",
    "mistral",
    "gemma",
    "phi",
    "deepseek",
    "deepseek3",
    "default",
    # the vendors' own Jinja shipped with TRL (kubetune.trainer.data.templates.VENDOR_TEMPLATES)
    "qwen2.5",
    "qwen3",
    "qwen3-instruct-2507",
    "llama3.1",
    "llama3.2",
    "gemma3",
    "phi3.5",
    "deepseek-v3",
    "deepseek-r1",
    "glm4-moe",
    "gpt-oss",
    "cohere",
    "cohere2",
    "lfm2",
    "nemotron3-nano",
)

MODEL_SCHEMES = ("file", "hf", "ms", "s3", "pvc")
DATASET_SCHEMES = ("file", "hf", "ms", "s3", "https", "http", "configmap", "pvc")
REGISTRY_SCHEMES = ("file", "s3", "https", "http", "configmap", "pvc")
OUTPUT_SCHEMES = ("file", "s3", "pvc")
ARTIFACT_SCHEMES = ("file", "s3", "pvc", "hf", "ms")


Problems = list[tuple[tuple[str | int, ...], str]]  # (path relative to the validated model, message)


class SpecProblems(ValueError):
    """One or more cross-field problems, each with a path relative to the validated model."""

    def __init__(self, problems: Problems):
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, p))}: {m}" for p, m in problems))


def uri_scheme(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else ""


def _check_uri(value: str, schemes: tuple[str, ...]) -> str:
    """The one URI validator of every source/output field: known scheme, no control characters, no credentials."""
    shown = redact(value)
    shown = shown if len(shown) <= 200 else shown[:197] + "..."
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"URI {shown!r} contains a control character (NUL, newline, tab ...); remove it")
    scheme = uri_scheme(value)
    if scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        got = f"scheme {scheme}://" if scheme else "no scheme"
        raise ValueError(f"unsupported URI {shown!r} ({got}); use one of {allowed}")
    if not value.split("://", 1)[1].strip("/"):
        raise ValueError(f"URI {shown!r} names nothing after the scheme")
    credential = credentials_in(value)
    if credential:
        raise ValueError(f"URI {shown!r} {credential}; {CREDENTIALS_HINT}")
    shape = uri_shape_problem(value)
    if shape:
        raise ValueError(shape)
    return value


# Every source/output URI field is one of these: ``_check_uri`` with the schemes that field accepts.
ArtifactUri = Annotated[str, AfterValidator(partial(_check_uri, schemes=ARTIFACT_SCHEMES))]
ModelUri = Annotated[str, AfterValidator(partial(_check_uri, schemes=MODEL_SCHEMES))]
DatasetUri = Annotated[str, AfterValidator(partial(_check_uri, schemes=DATASET_SCHEMES))]
RegistryUri = Annotated[str, AfterValidator(partial(_check_uri, schemes=REGISTRY_SCHEMES))]
OutputUri = Annotated[str, AfterValidator(partial(_check_uri, schemes=OUTPUT_SCHEMES))]


def _k8s_name(value: str | None, what: str, *, label_value: bool = False) -> str | None:
    """A reference to a Kubernetes object by name: a DNS-1123 subdomain (and a label value when it becomes one)."""
    if value is None:
        return None
    problem = dns_subdomain_problem(value) or (label_value_problem(value) if label_value else None)
    if problem:
        raise ValueError(f"{what} {problem}" if problem.startswith("is ") else f"{what}: {problem}")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        validate_by_name=False,  # YAML is camelCase only; snake_case is an unknown field with a hint
        validate_by_alias=True,
        alias_generator=to_camel,
        use_enum_values=True,
        validate_default=True,
        strict=True,  # as strict as the CRD: "16" is not an integer, "yes" is not a boolean (enums opt out)
    )
    _text_checked: ClassVar[bool] = True

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any, info: ValidationInfo) -> Any:
        """Every string of the spec (names, URIs, columns ...): no NUL, newline, bidi override or other control
        character; a regex pattern may hold tabs and newlines."""
        if cls._text_checked:
            allow = "\t\n\r" if info.field_name == "pattern" else ""
            items = (
                value
                if isinstance(value, list)
                else (*value, *value.values())
                if isinstance(value, dict)
                else (value,)
            )
            for text in items:
                problem = text_problem(text, allow=allow) if isinstance(text, str) else None
                if problem:
                    raise ValueError(problem)
        return value

    def to_dict(self) -> dict[str, Any]:
        """The camelCase form, without unset optional fields (what a user would write)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# ---------------------------------------------------------------------------------------------------- model


class QuantizationSpec(_Model):
    """bitsandbytes quantization of the frozen base model (QLoRA)."""

    bits: Literal[4, 8] = Field(4, description="Quantize base weights to 4 or 8 bits (bitsandbytes).")
    type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type: nf4 (QLoRA default) or fp4.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves ~0.4 bit/param).")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="dtype of matmuls on dequantized weights; auto picks bf16 on GPUs that have it, else fp32."
    )


class ArtifactRef(_Model):
    """An artifact given either by URI or by the name of a FineTuneJob that produces it."""

    source: ArtifactUri | None = Field(
        None, description="URI of the artifact (file://, s3://, pvc://, hf://, ms://). Used by `kubetune run`."
    )
    from_job: str | None = Field(
        None,
        description="Name of a FineTuneJob in the same namespace; the operator waits until it has Succeeded and "
        "then uses its adapter URI.",
    )

    @field_validator("from_job")
    @classmethod
    def _job_name(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 63 or not DNS_LABEL.fullmatch(v)):
            raise ValueError(f"{v!r} is not a valid FineTuneJob name (a DNS label of at most 63 characters)")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> ArtifactRef:
        if (self.source is None) == (self.from_job is None):
            raise SpecProblems([((), "give exactly one of `source` or `fromJob`")])
        return self


class ModelSpec(_Model):
    """The base model to fine-tune."""

    source: ModelUri = Field(
        ...,
        description="Model URI: hf://org/name, ms://org/name, s3://bucket/prefix/ (a Hugging Face folder), "
        "pvc://claim/path, or file:///path (a Hugging Face folder or a .gguf file, dequantized for training). "
        "Relative file:// paths are resolved against the FineTuneJob file's folder by `kubetune run`.",
    )
    revision: str | None = Field(
        None, description="Branch, tag or commit for hf:// and ms:// models; the resolved commit is recorded."
    )
    template: str | None = Field(
        None,
        description="Chat template name (llama3, qwen, chatml, mistral, gemma, phi, deepseek, default). "
        "Default: the tokenizer's own chat template.",
    )
    credentials_secret: str | None = Field(
        None,
        json_schema_extra=K8S_NAME_SCHEMA,
        description="Secret holding HF_TOKEN / MODELSCOPE_API_TOKEN / AWS_* keys to fetch the model.",
    )
    quantization: QuantizationSpec | None = Field(
        None, description="Quantize the base model (requires method lora or qlora). qlora defaults to 4-bit NF4."
    )
    trust_remote_code: bool = Field(False, description="Allow model repositories to run their own Python code.")
    adapter: ArtifactRef | None = Field(None, description="Start from an existing LoRA adapter (lora/qlora only).")
    parameters: str | None = Field(
        None,
        pattern=r"^[0-9]*\.?[0-9]+([eE][0-9]+)?[kKmMbBtT]?$",
        description="Approximate parameter count (e.g. 7B, 135M) for the GPU-fit check at validation time, before "
        "the model is fetched; the trainer re-checks with the model's real config.",
    )

    @field_validator("template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None and v not in TEMPLATE_NAMES:
            raise ValueError(
                f"unknown template {v[:40]!r}; use one of {', '.join(TEMPLATE_NAMES)}, or leave it out "
                "for the tokenizer's own"
            )
        return v

    @field_validator("credentials_secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        return _k8s_name(v, "Secret name")

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, v: str | None) -> str | None:
        if v is not None:
            from kubetune.api.memory import parse_parameters

            parse_parameters(v)  # a clear error for 0, 1e999B or a count no model has
        return v


# ---------------------------------------------------------------------------------------------------- data


class Formatting(str, enum.Enum):
    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"
    OPENAI = "openai"


class ColumnsSpec(_Model):
    """Column names (LLaMA-Factory `columns`). Unlike LLaMA-Factory, a column you leave out keeps its default."""

    prompt: str = Field("instruction", description="alpaca: the instruction column; pt: the text column.")
    query: str = Field("input", description="alpaca: the input column, appended to the instruction.")
    response: str = Field("output", description="alpaca: the response column.")
    history: str | None = Field(None, description="alpaca: list of [prompt, response] pairs of earlier turns.")
    messages: str = Field("conversations", description="sharegpt/openai: the message list column.")
    system: str | None = Field(None, description="System prompt column.")
    tools: str | None = Field(None, description="Tool description column (JSON string or object).")
    images: str | None = Field(None, description="Image path list column.")
    videos: str | None = Field(None, description="Video path list column.")
    audios: str | None = Field(None, description="Audio path list column.")
    chosen: str | None = Field(None, description="Preferred answer column (ranking datasets).")
    rejected: str | None = Field(None, description="Rejected answer column (ranking datasets).")
    kto_tag: str | None = Field(None, description="KTO boolean label column (true = desirable).")


class TagsSpec(_Model):
    """Message keys and role values for sharegpt/openai data (LLaMA-Factory `tags`); each keeps its default."""

    role_tag: str = Field("from", description="Message key holding the role.")
    content_tag: str = Field("value", description="Message key holding the text.")
    user_tag: str = Field("human", description="Role value of the user.")
    assistant_tag: str = Field("gpt", description="Role value of the assistant.")
    observation_tag: str = Field("observation", description="Role value of tool results.")
    function_tag: str = Field("function_call", description="Role value of tool calls.")
    system_tag: str = Field("system", description="Role value of a leading system message.")


class DatasetSpec(_Model):
    """One dataset, with LLaMA-Factory `dataset_info.json` semantics."""

    name: str = Field(..., description="Name used in reports, metrics and the manifest.", min_length=1, max_length=128)
    source: DatasetUri = Field(
        ...,
        description="Data URI: file:///path (json, jsonl, csv, parquet, arrow, txt, or a folder of one type), "
        "s3://bucket/key, https://host/file, hf://org/dataset, ms://org/dataset, configmap://name/key, pvc://claim/path.",
    )
    formatting: Formatting = Field(
        Formatting.ALPACA, strict=False, description="Row format: alpaca, sharegpt or openai."
    )
    ranking: bool = Field(False, description="Preference data (chosen/rejected); required by rm, dpo and orpo.")
    columns: ColumnsSpec = Field(default_factory=ColumnsSpec, description="Column names; omitted ones keep defaults.")
    tags: TagsSpec = Field(default_factory=TagsSpec, description="sharegpt role/content tags; omitted keep defaults.")
    subset: str | None = Field(None, description="Hub dataset config name.")
    folder: str | None = Field(None, description="Hub dataset data_dir.")
    split: str = Field("train", description="Split to load.")
    num_samples: Int | None = Field(
        None,
        ge=1,
        le=MAX_NUM_SAMPLES,
        description="Sample this many rows (seeded); more than the dataset has oversamples with replacement.",
    )


class DatasetRegistrySpec(_Model):
    """A LLaMA-Factory `dataset_info.json`, and which of its entries to train on."""

    source: RegistryUri = Field(
        ...,
        description="URI of dataset_info.json (file://, s3://, https://, configmap://name/key, pvc://). "
        "Relative file_name entries resolve against its folder.",
    )
    names: list[str] = Field(..., min_length=1, description="Entries of the registry to use, in order.")


# ---------------------------------------------------------------------------------------------------- method


class MethodType(str, enum.Enum):
    FULL = "full"
    FREEZE = "freeze"
    LORA = "lora"
    QLORA = "qlora"


class LoraSpec(_Model):
    """LoRA adapter settings (peft)."""

    rank: Int = Field(8, gt=0, le=4096, description="LoRA rank r.")
    alpha: Int | None = Field(None, gt=0, description="LoRA alpha; default 2 x rank.")
    dropout: Float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target: list[str] = Field(
        default_factory=lambda: ["all"],
        min_length=1,
        description='Modules to adapt: ["all"] for every linear layer except the output head, or module names.',
    )
    dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r).")
    pissa: bool = Field(False, description="Initialise from principal singular vectors (PiSSA).")
    loraplus_ratio: Float | None = Field(None, gt=0, description="LoRA+: learning-rate ratio of B to A matrices.")


class FreezeSpec(_Model):
    """Partial fine-tuning: train only some layers."""

    trainable_layers: Int = Field(
        2, description="Train the last N decoder layers (negative: the first N).", ge=-1024, le=1024
    )
    modules: list[str] = Field(default_factory=list, description="Train these named modules instead (e.g. mlp).")

    @field_validator("trainable_layers")
    @classmethod
    def _nonzero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("must not be 0 (no layer would train)")
        return v


class MethodSpec(_Model):
    """How the weights are trained."""

    type: MethodType = Field(
        MethodType.LORA, strict=False, description="full, freeze, lora or qlora (LoRA on a quantized base)."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings (lora and qlora).")
    freeze: FreezeSpec = Field(default_factory=FreezeSpec, description="Freeze settings (freeze).")


# ---------------------------------------------------------------------------------------------------- training


class PreferenceSpec(_Model):
    """DPO / ORPO / SimPO settings."""

    beta: Float = Field(0.1, gt=0, description="Strength of the KL constraint (DPO beta, ORPO lambda).")
    loss: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo"] = Field("sigmoid", description="Preference loss.")
    ftx: Float = Field(0.0, ge=0, description="Weight of an SFT loss on the chosen answer.")
    simpo_gamma: Float = Field(0.5, ge=0, description="SimPO target reward margin.")


class KtoSpec(_Model):
    """KTO settings."""

    beta: Float = Field(0.1, gt=0, description="KTO beta.")
    desirable_weight: Float = Field(1.0, gt=0, description="Loss weight of desirable examples.")
    undesirable_weight: Float = Field(1.0, gt=0, description="Loss weight of undesirable examples.")


class PpoSpec(_Model):
    """PPO settings (kubetune's own PPO loop)."""

    rollout_batch_size: Int = Field(4, gt=0, description="Prompts per rollout.")
    ppo_epochs: Int = Field(2, gt=0, description="Optimisation epochs over each rollout.")
    max_new_tokens: Int = Field(32, gt=0, le=4096, description="Tokens generated per prompt.")
    kl_coef: Float = Field(0.05, ge=0, description="KL penalty to the reference policy.")
    clip_range: Float = Field(0.2, gt=0, description="PPO policy ratio clip.")
    clip_range_value: Float = Field(0.2, gt=0, description="Value function clip.")
    gamma: Float = Field(1.0, gt=0, le=1, description="Discount.")
    lam: Float = Field(0.95, gt=0, le=1, description="GAE lambda.")
    vf_coef: Float = Field(0.1, ge=0, description="Value loss weight.")
    temperature: Float = Field(1.0, gt=0, description="Sampling temperature.")


class RewardFunctionSpec(_Model):
    """A rule-based reward for grpo, scored in the trainer without a model (verifiable rewards)."""

    type: Literal["answer", "regex", "exact"] = Field(
        ...,
        description="answer: 1 when the completion contains the row's reference answer (case and whitespace "
        "ignored), else 0; regex: 1 when `pattern` is found in the completion, else 0; exact: 1 when the "
        "completion is the reference answer (case and whitespace ignored), else 0.",
    )
    pattern: str | None = Field(
        None,
        description="Regular expression of a regex reward (Python syntax, searched "
        "with DOTALL), e.g. a required output format.",
    )
    weight: Float = Field(1.0, description="Weight of this reward in the sum (a reward model counts with weight 1).")


def reward_function_problems(rule: RewardFunctionSpec) -> list[tuple[tuple[str, ...], str]]:
    import re

    if rule.type == "regex":
        if not rule.pattern:
            return [(("pattern",), "a regex reward needs a pattern")]
        try:
            re.compile(rule.pattern)
        except re.error as exc:
            return [(("pattern",), f"not a valid regular expression: {exc}")]
    elif rule.pattern is not None:
        return [(("pattern",), f"pattern applies to type regex only, not {rule.type}")]
    return []


class GuardSpec(_Model):
    """Divergence guard: a NaN/Inf loss or gradient norm, or a loss spike, rolls training back instead of ruining it."""

    enabled: bool = Field(
        True,
        description="Watch every optimizer step; on divergence discard the step's batches, "
        "restore the last good in-memory copy of the trainable parameters and optimizer state, "
        "cut the learning rate and continue.",
    )
    spike_factor: Float = Field(
        5.0,
        gt=1,
        le=1000,
        description="A step whose loss exceeds this many times the mean "
        "of the last `window` good steps is a spike (pt and sft only: their loss is a "
        "cross-entropy; other stages check NaN/Inf only).",
    )
    window: Int = Field(
        20,
        ge=2,
        le=10000,
        description="Good steps the spike check averages over; no spike check before this many good steps (warm-up).",
    )
    lr_cut: Float = Field(
        0.5,
        gt=0,
        le=1,
        description="Each rollback multiplies the learning rate (and the schedule's base) by this factor.",
    )
    max_rollbacks: Int = Field(
        3,
        ge=0,
        le=100,
        description="Rollbacks allowed; one more divergence fails the job with exit code 5 (Diverged, not retried).",
    )


class TrainingSpec(_Model):
    """Hyper-parameters."""

    epochs: Float = Field(1.0, gt=0, le=10000, description="Passes over the training data.")
    max_steps: Int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: Int = Field(1, gt=0, le=65536, description="Per-device micro-batch size.")
    gradient_accumulation: Int = Field(1, gt=0, le=65536, description="Micro-batches per optimizer step.")
    learning_rate: Float = Field(
        1e-4, ge=0, lt=1, description="Peak learning rate (0 changes no weight: a control run for spec.evaluation)."
    )
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule."
    )
    warmup_ratio: Float = Field(0.0, ge=0, lt=1, description="Fraction of steps for warmup.")
    weight_decay: Float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: Float = Field(1.0, gt=0, description="Gradient clipping norm.")
    cutoff_len: Int = Field(1024, gt=0, le=1048576, description="Maximum tokens per example (or packed block).")
    packing: bool | None = Field(
        None, description="Pack examples into cutoffLen blocks without cross-attention. Default: on for pt, else off."
    )
    train_on_prompt: bool = Field(False, description="Also compute loss on prompt tokens (sft only).")
    mask_history: bool = Field(False, description="Train on the last turn only (sft only).")
    max_samples: Int | None = Field(None, gt=0, description="Use at most this many rows per dataset (first N).")
    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = Field(
        "concat", description="How several datasets are mixed."
    )
    interleave_probs: list[Float] | None = Field(None, description="Sampling probabilities for interleaving.")
    eval_split: Float = Field(0.0, ge=0, lt=1, description="Fraction of rows held out for evaluation.")
    eval_steps: Int | None = Field(None, gt=0, description="Evaluate every N steps (default: at the end only).")
    logging_steps: Int = Field(1, gt=0, description="Log metrics every N steps.")
    seed: Int = Field(42, ge=0, lt=2**32, description="Random seed for sampling, splitting and initialisation.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Training precision; auto is bf16 on GPUs that support it, fp32 on CPU."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    attention: Literal["auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] = Field(
        "auto",
        description="Attention implementation. auto: FlashAttention 3 on Hopper and FlashAttention 2 on "
        "Ampere or newer GPUs when the trainer image has them, else PyTorch SDPA. The resolved choice is recorded "
        "in the artifact's manifest.",
    )
    kernels: list[Literal["liger", "chunked_loss"]] = Field(
        default_factory=list,
        max_length=2,
        description="Extra kernels. liger: Liger's fused RMSNorm, RoPE, SwiGLU and linear cross-entropy (CUDA, "
        "needs the liger-kernel package). chunked_loss: the LM head and cross-entropy computed over chunks of "
        "trained positions and recomputed in the backward pass, so a 128k-152k vocabulary's logits never exist "
        "all at once (any device; not with fsdp).",
    )
    preference: PreferenceSpec = Field(default_factory=PreferenceSpec, description="dpo/orpo settings.")
    kto: KtoSpec = Field(default_factory=KtoSpec, description="kto settings.")
    ppo: PpoSpec = Field(default_factory=PpoSpec, description="ppo settings.")
    reward_model: ArtifactRef | None = Field(None, description="Reward model for ppo/grpo: a URI or an rm job.")
    reward_functions: list[RewardFunctionSpec] = Field(
        default_factory=list,
        max_length=16,
        description="grpo: rule-based rewards, added to (or instead of) the reward model's score.",
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list, description="Extra experiment trackers (offline/local modes)."
    )
    guard: GuardSpec = Field(default_factory=GuardSpec, description="Divergence guard (on by default).")
    stall_timeout_seconds: Int | None = Field(
        None,
        ge=1,
        le=7 * 86400,
        description="Hang watchdog: with no optimizer step for this long every rank dumps its Python stacks (log "
        "and termination message) and exits with code 75, which the Job retries (resuming from the last "
        "checkpoint). Default: max(600, 20 x the median measured step time), armed after the first step.",
    )


# ---------------------------------------------------------------------------------------------------- evaluation


class GateSpec(_Model):
    """Conditions the trained model must meet to be promoted; every condition set must hold (none set: promoted)."""

    eval_loss_improvement_percent: Float | None = Field(
        None,
        ge=-100,
        le=100,
        description="The trained model's eval loss must be at least this many percent below the base model's "
        "(negative: the regression tolerated). Needs evaluation data: evalDatasets or training.evalSplit.",
    )
    max_eval_loss: Float | None = Field(None, gt=0, description="The trained model's eval loss must not exceed this.")
    min_rule_score: Float | None = Field(
        None,
        ge=0,
        le=1,
        description="The trained model's rule score (weighted mean over prompts, 0-1) must reach this.",
    )
    rule_score_gain: Float | None = Field(
        None, ge=-1, le=1, description="The trained rule score minus the base model's must reach this."
    )
    min_reward: Float | None = Field(None, description="The trained model's mean reward-model score must reach this.")
    reward_gain: Float | None = Field(
        None, description="The trained mean reward minus the base model's must reach this."
    )


class EvaluationSpec(_Model):
    """After training, the base and the trained model are evaluated side by side; the gate decides promotion."""

    prompts: list[DatasetSpec] = Field(
        default_factory=list,
        max_length=16,
        description="Prompt sets answered (greedy) by both models and scored by `rules` and/or `rewardModel`; a "
        "row's reference answer is its response.",
    )
    rules: list[RewardFunctionSpec] = Field(
        default_factory=list,
        max_length=16,
        description="Rule checks on each answer (answer found, regex, exact match), summed with their weights "
        "into a 0-1 rule score.",
    )
    reward_model: ArtifactRef | None = Field(
        None, description="A reward model (an rm job's output) that scores each answer: a URI or an rm job."
    )
    max_prompts: Int = Field(64, gt=0, le=100000, description="Prompts evaluated per model (the first N).")
    max_new_tokens: Int = Field(64, gt=0, le=8192, description="Tokens generated per answer.")
    gate: GateSpec = Field(default_factory=GateSpec, description="Promotion conditions.")


def evaluation_problems(
    ev: EvaluationSpec, stage: Stage, has_eval_data: bool
) -> list[tuple[tuple[str | int, ...], str]]:
    """What makes ``spec.evaluation`` unusable for this stage and data (paths relative to spec.evaluation)."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if stage == Stage.RM:
        return [((), "stage rm trains a scorer, not a generator; evaluate its policy job instead")]
    loss_gates = [
        name
        for name, value in (
            ("evalLossImprovementPercent", ev.gate.eval_loss_improvement_percent),
            ("maxEvalLoss", ev.gate.max_eval_loss),
        )
        if value is not None
    ]
    for name in loss_gates:
        if stage not in (Stage.PT, Stage.SFT):
            problems.append((("gate", name), f"eval-loss gates apply to stages pt and sft, not {stage.value}"))
        elif not has_eval_data:
            problems.append((("gate", name), "needs evaluation data: set spec.evalDatasets or training.evalSplit"))
    for i, rule in enumerate(ev.rules):
        problems += [(("rules", i, *p), m) for p, m in reward_function_problems(rule)]
    if (ev.rules or ev.reward_model is not None) and not ev.prompts:
        problems.append((("prompts",), "rules and rewardModel score answers to prompts: give at least one prompt set"))
    if ev.prompts and not ev.rules and ev.reward_model is None:
        problems.append((("rules",), "prompts need a way to score the answers: give rules or a rewardModel"))
    for name, value in (("minRuleScore", ev.gate.min_rule_score), ("ruleScoreGain", ev.gate.rule_score_gain)):
        if value is not None and not ev.rules:
            problems.append((("gate", name), "needs evaluation.rules"))
    for name, value in (("minReward", ev.gate.min_reward), ("rewardGain", ev.gate.reward_gain)):
        if value is not None and ev.reward_model is None:
            problems.append((("gate", name), "needs evaluation.rewardModel"))
    if not problems and not ev.prompts and not (has_eval_data and stage in (Stage.PT, Stage.SFT)):
        problems.append(
            ((), "nothing to evaluate: give prompts with rules or a rewardModel, or (pt/sft) evaluation data")
        )
    names: set[str] = set()
    for i, ds in enumerate(ev.prompts):
        if ds.name in names:
            problems.append((("prompts", i, "name"), f"duplicate prompt set name {ds.name!r}"))
        names.add(ds.name)
        if ds.ranking:
            problems.append((("prompts", i, "ranking"), "a prompt set is not pairwise data: drop ranking"))
    return problems


# ---------------------------------------------------------------------------------------------------- cluster


class ResourcesSpec(_Model):
    """Where and how big the training pods are."""

    nodes: Int = Field(1, ge=1, le=1024, description="Pods (one per node); each runs gpusPerNode processes.")
    gpus_per_node: Int = Field(1, ge=0, le=64, description="GPUs requested by each pod (0 = CPU training).")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of the GPUs.")
    gpu_type: str | None = Field(None, description="GPU model (e.g. H100-80GB), used for the memory-fit estimate.")
    cpu: str | None = Field(None, pattern=QUANTITY, description="CPU request and limit of each pod.")
    memory: str | None = Field(None, pattern=QUANTITY, description="Memory request and limit of each pod.")
    shared_memory: str = Field("8Gi", pattern=QUANTITY, description="Size of the /dev/shm volume.")
    cache_size: str = Field("100Gi", pattern=QUANTITY, description="Size of the model/data cache volume.")
    cache_claim: str | None = Field(
        None, json_schema_extra=K8S_NAME_SCHEMA, description="PVC for the model/data cache (default: an emptyDir)."
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods must match.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Pod tolerations.")
    affinity: dict[str, Any] | None = Field(None, description="Pod affinity rules.")
    priority_class_name: str | None = Field(
        None, json_schema_extra=K8S_NAME_SCHEMA, description="PriorityClass of the pods."
    )
    image: str | None = Field(None, description="Trainer image; default: the operator's configured image.")
    service_account_name: str | None = Field(
        None, json_schema_extra=K8S_NAME_SCHEMA, description="ServiceAccount of the training pods."
    )

    @field_validator("cpu", "memory", "shared_memory", "cache_size")
    @classmethod
    def _quantity(cls, v: str | None) -> str | None:
        problem = None if v is None else quantity_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("cache_claim")
    @classmethod
    def _claim(cls, v: str | None) -> str | None:
        return _k8s_name(v, "PersistentVolumeClaim name")

    @field_validator("service_account_name")
    @classmethod
    def _service_account(cls, v: str | None) -> str | None:
        return _k8s_name(v, "ServiceAccount name")

    @field_validator("priority_class_name")
    @classmethod
    def _priority_class(cls, v: str | None) -> str | None:
        return _k8s_name(v, "PriorityClass name")

    @field_validator("gpu_resource")
    @classmethod
    def _resource_name(cls, v: str) -> str:
        problem = qualified_name_problem(v)
        if problem:
            raise ValueError(f"extended resource name {problem}")
        return v

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            problem = qualified_name_problem(key) or label_value_problem(value)
            if problem:
                raise ValueError(f"node label {problem}")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c.isspace() for c in v) or len(v) > 4096):
            raise ValueError("an image reference is non-empty, without spaces (e.g. ghcr.io/org/trainer:1.0)")
        return v


class DistributedSpec(_Model):
    """Data-parallel strategy inside and across pods (through accelerate)."""

    strategy: Literal["auto", "ddp", "fsdp", "deepspeed"] = Field(
        "auto", description="auto: single process on one device, DDP on several."
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    offload: bool = Field(False, description="Offload optimizer states (and ZeRO-3 params) to CPU.")
    rendezvous_timeout_seconds: int = Field(
        900,
        gt=0,
        le=86400,
        description="Multi-node start: how long the pods wait for each other (torchrun's rendezvous) before "
        "failing, in seconds. Covers a pod still pulling its image or waiting for a node.",
    )
    collective_timeout_seconds: int = Field(
        1800,
        gt=0,
        le=86400,
        description="How long a collective operation (all-reduce, all-gather, barrier) may wait for the other "
        "processes, in seconds. A node that dies or is cut off mid-run fails the remaining ones after this "
        "long instead of leaving them hanging; it must exceed the slowest step, evaluation or checkpoint save.",
    )


class CheckpointingSpec(_Model):
    """Periodic checkpoints, kept in the output storage for resume."""

    every_steps: Int | None = Field(None, gt=0, description="Checkpoint every N steps (default: no periodic ones).")
    keep: Int = Field(2, gt=0, le=1000, description="Keep the newest N complete checkpoints.")
    resume: bool = Field(True, description="Resume from the newest complete checkpoint when one exists.")
    keep_after_success: bool = Field(
        False,
        description="Keep the uploaded checkpoints once the artifact is published (default: delete them; "
        "they hold optimizer state and exist for resuming an unfinished run).",
    )


class HubSpec(_Model):
    """Push the adapter to the Hugging Face Hub after training."""

    repo: str = Field(..., description="Repository id, org/name.")
    credentials_secret: str = Field(..., json_schema_extra=K8S_NAME_SCHEMA, description="Secret holding HF_TOKEN.")
    private: bool = Field(True, description="Create the repository as private.")

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str) -> str:
        problem = repo_id_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("credentials_secret")
    @classmethod
    def _secret(cls, v: str) -> str:
        return _k8s_name(v, "Secret name") or v


class OutputSpec(_Model):
    """Where the adapter, merged model, curves and manifest go."""

    uri: OutputUri | None = Field(
        None,
        description="s3://bucket/prefix, file:///path or pvc://claim/path. Default for `kubetune run`: "
        "file://./output/<name> beside the FineTuneJob file.",
    )
    credentials_secret: str | None = Field(
        None, json_schema_extra=K8S_NAME_SCHEMA, description="Secret with AWS_* keys (and AWS_ENDPOINT_URL)."
    )
    merge: bool = Field(False, description="Also export the base model merged with the adapter (safetensors).")
    hub: HubSpec | None = Field(None, description="Also push the adapter to the Hugging Face Hub.")

    @field_validator("credentials_secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        return _k8s_name(v, "Secret name")


class RunPolicySpec(_Model):
    """Kubernetes Job policy."""

    backoff_limit: Int = Field(3, ge=0, le=100, description="Pod restarts before the Job fails.")
    active_deadline_seconds: Int | None = Field(None, gt=0, description="Hard time limit of the whole Job.")
    ttl_seconds_after_finished: Int | None = Field(
        None, ge=0, le=INT32_MAX, description="Delete the finished Job after N seconds."
    )


# ---------------------------------------------------------------------------------------------------- spec


class FineTuneJobSpec(_Model):
    """What to train, on what data, how, and where the result goes."""

    stage: Stage = Field(
        Stage.SFT, strict=False, description="Training stage: pt, sft, rm, ppo, dpo, kto, orpo or grpo."
    )
    model: ModelSpec = Field(..., description="The base model.")
    datasets: list[DatasetSpec] = Field(default_factory=list, description="Datasets given inline.")
    dataset_registry: DatasetRegistrySpec | None = Field(
        None, description="Datasets taken from a LLaMA-Factory dataset_info.json."
    )
    eval_datasets: list[DatasetSpec] = Field(default_factory=list, description="Datasets used only for evaluation.")
    evaluation: EvaluationSpec | None = Field(
        None,
        description="Evaluation gate: after training, the base and the trained model are evaluated (eval loss and "
        "perplexity, rule checks, a reward model); a failed gate keeps the artifact unpromoted and fails the job.",
    )
    method: MethodSpec = Field(default_factory=MethodSpec, description="Fine-tuning method.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Hyper-parameters.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Pods, GPUs and scheduling.")
    distributed: DistributedSpec = Field(default_factory=DistributedSpec, description="Parallelism strategy.")
    checkpointing: CheckpointingSpec = Field(default_factory=CheckpointingSpec, description="Checkpoints and resume.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where artifacts are written.")
    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec, description="Job retry and time limits.")
    suspend: bool = Field(False, description="Suspend the training Job (pods are deleted; resume continues).")
    queue_name: str | None = Field(
        None,
        json_schema_extra=LABEL_NAME_SCHEMA,
        description="Kueue LocalQueue; the Job is created suspended for Kueue.",
    )

    @field_validator("queue_name")
    @classmethod
    def _queue(cls, v: str | None) -> str | None:
        return _k8s_name(v, "LocalQueue name", label_value=True)  # it becomes the queue-name label

    @model_validator(mode="after")
    def _cross_field(self) -> FineTuneJobSpec:
        problems = [problem for check in CROSS_FIELD_CHECKS for problem in check(self)]
        if not problems:  # the memory estimate needs an otherwise valid spec
            problems = check_memory_fit(self)
        if problems:
            raise SpecProblems(problems)
        return self

    # Derived values the operator and trainer agree on -----------------------------------------------------------

    @property
    def quantization(self) -> QuantizationSpec | None:
        """The effective quantization: explicit, or 4-bit NF4 for qlora."""
        if self.model.quantization is not None:
            return self.model.quantization
        if MethodType(self.method.type) == MethodType.QLORA:
            return QuantizationSpec()
        return None

    @property
    def packing(self) -> bool:
        if self.training.packing is not None:
            return self.training.packing
        return STAGE_CONTRACTS[Stage(self.stage)].default_packing

    @property
    def world_size(self) -> int:
        return self.resources.nodes * max(1, self.resources.gpus_per_node)


def dataset_problems(ds: DatasetSpec, stage: Stage) -> list[tuple[tuple[str, ...], str]]:
    """Stage ↔ dataset rules (LLaMA-Factory's "dataset is not applicable in the current training stage")."""
    contract = STAGE_CONTRACTS[stage]
    problems: list[tuple[tuple[str, ...], str]] = []
    if contract.ranking and not ds.ranking:
        problems.append(
            (("ranking",), f"stage {stage.value} needs pairwise data: set ranking: true and chosen/rejected")
        )
    if not contract.ranking and ds.ranking:
        problems.append((("ranking",), f"stage {stage.value} does not train on pairwise data; use rm, dpo or orpo"))
    if (
        ds.ranking
        and Formatting(ds.formatting) == Formatting.ALPACA
        and not (ds.columns.chosen and ds.columns.rejected)
    ):
        problems.append((("columns",), "ranking alpaca data needs columns.chosen and columns.rejected"))
    if contract.needs_kto_tag and not ds.columns.kto_tag:
        problems.append((("columns", "ktoTag"), "stage kto needs a boolean label column: set columns.ktoTag"))
    if not contract.needs_kto_tag and ds.columns.kto_tag:
        problems.append((("columns", "ktoTag"), f"stage {stage.value} does not use KTO labels"))
    if stage == Stage.PT and Formatting(ds.formatting) != Formatting.ALPACA:
        problems.append((("formatting",), "stage pt reads text: use formatting alpaca with columns.prompt"))
    return problems


# ---------------------------------------------------------------------------------------------------- cross-field checks
# Each takes the otherwise valid spec and returns its problems (path relative to the spec, message), in the order
# FineTuneJobSpec reports them.


def check_datasets(spec: FineTuneJobSpec) -> Problems:
    """At least one dataset (or a registry), unique names, and each dataset fit for the stage."""
    problems: Problems = []
    stage = Stage(spec.stage)
    if not spec.datasets and spec.dataset_registry is None:
        problems.append((("datasets",), "give at least one dataset, or a datasetRegistry"))
    seen: set[str] = set()
    for i, ds in enumerate(spec.datasets):
        if ds.name in seen:
            problems.append((("datasets", i, "name"), f"duplicate dataset name {ds.name!r}"))
        seen.add(ds.name)
        problems += [(("datasets", i, *p), m) for p, m in dataset_problems(ds, stage)]
    for i, ds in enumerate(spec.eval_datasets):
        problems += [(("evalDatasets", i, *p), m) for p, m in dataset_problems(ds, stage)]
    return problems


def check_method(spec: FineTuneJobSpec) -> Problems:
    """Quantization and an adapter to train further need method lora or qlora."""
    problems: Problems = []
    method = MethodType(spec.method.type)
    if spec.model.quantization is not None and method not in (MethodType.LORA, MethodType.QLORA):
        problems.append(
            (("model", "quantization"), f"quantization only works with method lora or qlora, not {method.value}")
        )
    if spec.model.adapter is not None and method not in (MethodType.LORA, MethodType.QLORA):
        problems.append(
            (("model", "adapter"), f"an adapter can only be trained further with lora/qlora, not {method.value}")
        )
    return problems


def check_rewards(spec: FineTuneJobSpec) -> Problems:
    """A reward model where the stage needs one (or reward functions, for grpo), and none where it does not."""
    problems: Problems = []
    stage = Stage(spec.stage)
    contract = STAGE_CONTRACTS[stage]
    rules = spec.training.reward_functions
    if contract.needs_reward_model and spec.training.reward_model is None and not (rules and stage == Stage.GRPO):
        also = " or training.rewardFunctions" if stage == Stage.GRPO else ""
        problems.append(
            (("training", "rewardModel"), f"stage {spec.stage} needs a reward model (source or fromJob){also}")
        )
    if rules and stage != Stage.GRPO:
        problems.append(
            (("training", "rewardFunctions"), f"rewardFunctions apply to stage grpo only, not {spec.stage}")
        )
    for i, rule in enumerate(rules):
        problems += [(("training", "rewardFunctions", i, *p), m) for p, m in reward_function_problems(rule)]
    if not contract.needs_reward_model and spec.training.reward_model is not None:
        problems.append((("training", "rewardModel"), f"stage {spec.stage} does not use a reward model"))
    return problems


def check_sft_flags(spec: FineTuneJobSpec) -> Problems:
    """trainOnPrompt and maskHistory: stage sft only, and not both."""
    problems: Problems = []
    if Stage(spec.stage) != Stage.SFT:
        for flag, name in (
            (spec.training.train_on_prompt, "trainOnPrompt"),
            (spec.training.mask_history, "maskHistory"),
        ):
            if flag:
                problems.append((("training", name), f"{name} applies to stage sft only"))
    if spec.training.train_on_prompt and spec.training.mask_history:
        problems.append((("training", "maskHistory"), "maskHistory cannot be combined with trainOnPrompt"))
    return problems


def check_mixing(spec: FineTuneJobSpec) -> Problems:
    """interleaveProbs: an interleaving mixStrategy, one probability per dataset, a distribution."""
    probs = spec.training.interleave_probs
    if probs is None:
        return []
    if spec.training.mix_strategy == "concat":
        return [(("training", "interleaveProbs"), "set mixStrategy to interleave_under/over to use it")]
    if spec.datasets and len(probs) != len(spec.datasets):
        return [(("training", "interleaveProbs"), f"needs {len(spec.datasets)} values, one per dataset")]
    if any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
        return [(("training", "interleaveProbs"), "values must be >= 0 and sum to 1")]
    return []


def check_evaluation(spec: FineTuneJobSpec) -> Problems:
    """The evaluation gate, and evalSteps only with data to evaluate on."""
    problems: Problems = []
    if spec.evaluation is not None:
        has_eval_data = bool(spec.eval_datasets) or spec.training.eval_split > 0
        problems += [
            (("evaluation", *p), m) for p, m in evaluation_problems(spec.evaluation, Stage(spec.stage), has_eval_data)
        ]
    if spec.training.eval_steps is not None and spec.training.eval_split == 0 and not spec.eval_datasets:
        problems.append((("training", "evalSteps"), "set evalSplit > 0 or evalDatasets to evaluate"))
    return problems


def check_kernels_and_distribution(spec: FineTuneJobSpec) -> Problems:
    """Attention and kernels against the GPUs and strategy; CPU offload needs deepspeed; qlora cannot use ZeRO-3."""
    from kubetune.api.kernels import spec_problems as kernel_problems

    problems: Problems = [
        *kernel_problems(
            spec.training.attention,
            list(spec.training.kernels),
            gpus_per_node=spec.resources.gpus_per_node,
            strategy=spec.distributed.strategy,
        )
    ]
    if spec.distributed.offload and spec.distributed.strategy != "deepspeed":
        problems.append((("distributed", "offload"), "CPU offload needs strategy deepspeed"))
    if (
        MethodType(spec.method.type) == MethodType.QLORA
        and spec.distributed.strategy == "deepspeed"
        and spec.distributed.zero_stage == 3
    ):
        problems.append((("distributed", "zeroStage"), "qlora does not work with ZeRO-3; use stage 2 or fsdp"))
    return problems


def check_memory_fit(spec: FineTuneJobSpec) -> Problems:
    """Whether the model fits the GPU type's memory (from spec.model.parameters); needs an otherwise valid spec."""
    if not (spec.model.parameters and spec.resources.gpu_type):
        return []
    from kubetune.api.memory import ModelShape, fit_problem

    try:  # the vocabulary from the model's config.json when visible, else from its family name
        shape = ModelShape.for_model(spec.model.source, spec.model.parameters)
        message = fit_problem(spec, shape) if shape is not None else None
    except (ArithmeticError, ValueError) as exc:
        message = f"cannot estimate the memory this job needs: {exc}"
    return [(("resources", "gpuType"), message)] if message else []


CROSS_FIELD_CHECKS: tuple[Callable[[FineTuneJobSpec], Problems], ...] = (
    check_datasets,
    check_method,
    check_rewards,
    check_sft_flags,
    check_mixing,
    check_evaluation,
    check_kernels_and_distribution,
)


# ---------------------------------------------------------------------------------------------------- status


class _Status(_Model):
    """Status is written by the operator from what it observed (a NaN loss included): not user input."""

    model_config = ConfigDict(**{**_Model.model_config, "strict": False})
    _text_checked: ClassVar[bool] = False


class Condition(_Status):
    """A kstatus-compatible condition."""

    type: str = Field(
        ..., description="Ready, Validated, Running, Succeeded, Failed, Suspended, Reconciling, Stalled."
    )
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field("", description="CamelCase machine-readable reason.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str | None = Field(None, description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, description="metadata.generation this condition describes.")


class ProgressStatus(_Status):
    """Live training progress, pulled from the rank-0 pod's metrics endpoint."""

    step: int | None = Field(None, description="Optimizer steps done.")
    total_steps: int | None = Field(None, description="Optimizer steps planned.")
    percent: float | None = Field(None, description="step / totalSteps x 100.")
    epoch: float | None = Field(None, description="Fractional epoch.")
    loss: float | None = Field(None, description="Latest training loss.")
    eval_loss: float | None = Field(None, description="Latest evaluation loss.")
    learning_rate: float | None = Field(None, description="Current learning rate.")
    tokens_per_second: float | None = Field(None, description="Non-padding tokens per second, all ranks.")
    eta_seconds: float | None = Field(None, description="Estimated seconds to finish.")
    eta: str | None = Field(None, description="ETA for display, e.g. 1h02m.")


class ArtifactsStatus(_Status):
    """Where the results are."""

    adapter_uri: str | None = Field(None, description="Adapter (or full model) folder.")
    manifest_uri: str | None = Field(None, description="manifest.json, written last.")
    merged_uri: str | None = Field(None, description="Merged model folder, when output.merge is set.")


class DatasetReport(_Status):
    """Preflight result for one dataset."""

    name: str = Field(..., description="Dataset name.")
    rows: int = Field(0, description="Rows read.")
    valid: int = Field(0, description="Rows converted and tokenized.")
    dropped: int = Field(0, description="Rows rejected (see the trainer log for reasons and row indexes).")


class GuardStatus(_Status):
    """The divergence guard's rollbacks, from the rank-0 trainer's metrics (spec.training.guard)."""

    rollbacks: int = Field(0, description="Rollbacks by the current trainer process (a restarted pod counts anew).")
    diverged: bool = Field(False, description="True from a rollback until `window` good steps followed it.")
    reason: str | None = Field(
        None, description="Why the latest rollback happened: nan_loss, nan_grad_norm or loss_spike."
    )


class CostStatus(_Status):
    """What the job has used so far, from its training pods' start and finish times (restarts included)."""

    node_seconds: float | None = Field(
        None, description="Seconds the training pods ran, summed over all pods and attempts."
    )
    gpu_seconds: float | None = Field(None, description="nodeSeconds x resources.gpusPerNode.")
    gpu_hours: float | None = Field(None, description="gpuSeconds / 3600.")
    tokens_per_gpu_hour: float | None = Field(
        None,
        description="Current training throughput: non-padding tokens "
        "per second of all ranks x 3600 / GPUs in the job.",
    )
    estimated_cost: float | None = Field(
        None,
        description="gpuHours x the operator's price for resources.gpuType "
        "(chart value costs.gpuHourPrice); absent without a price.",
    )
    projected_gpu_hours: float | None = Field(
        None,
        description="While training: gpuHours so far plus the trainer's ETA x the job's GPUs (once the first "
        "steps are measured).",
    )
    projected_cost: float | None = Field(
        None, description="projectedGpuHours x the price for resources.gpuType; absent without a price."
    )


class StallStatus(_Status):
    """The newest trainer pod the hang watchdog ended (exit 75, retried by the Job)."""

    pod: str | None = Field(None, description="Pod name.")
    finished_at: str | None = Field(None, description="When it exited (RFC 3339).")
    message: str | None = Field(
        None,
        description="Its termination message: the stall and the first lines of the Python stacks (the stuck frame).",
    )


class EvaluationScores(_Status):
    """One model's evaluation (spec.evaluation); a score is absent when nothing measured it."""

    eval_loss: float | None = Field(None, description="Token-weighted mean loss on the evaluation data.")
    perplexity: float | None = Field(None, description="exp(evalLoss).")
    rule_score: float | None = Field(None, description="Weighted rule score, 0-1, mean over the prompts.")
    reward: float | None = Field(None, description="Mean reward-model score over the prompts.")
    prompts: int | None = Field(None, description="Prompts answered.")


class GateCheck(_Status):
    """One gate condition and how the trained model did."""

    name: str = Field(..., description="The spec.evaluation.gate field, e.g. evalLossImprovementPercent.")
    value: float | None = Field(None, description="What was measured.")
    threshold: float = Field(..., description="What the gate asked for.")
    passed: bool = Field(..., description="Whether the condition holds.")


class EvaluationStatus(_Status):
    """The evaluation gate's result, from the trainer (also in the artifact's manifest)."""

    promoted: bool = Field(..., description="True when every gate condition held.")
    base: EvaluationScores | None = Field(None, description="The base model's scores.")
    trained: EvaluationScores | None = Field(None, description="The trained model's scores.")
    checks: list[GateCheck] = Field(default_factory=list, description="Each gate condition.")


class FineTuneJobStatus(_Status):
    """Observed state, written by the operator."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"] | None = Field(
        None, description="Pending, Running, Succeeded, Failed or Suspended."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Conditions, kstatus style.")
    observed_generation: int | None = Field(None, description="Last metadata.generation acted on.")
    progress: ProgressStatus | None = Field(None, description="Live training progress.")
    start_time: str | None = Field(None, description="When training pods started.")
    completion_time: str | None = Field(None, description="When the Job finished.")
    restarts: int | None = Field(None, description="Pod restarts and failed attempts so far.")
    last_checkpoint: str | None = Field(None, description="URI of the newest complete checkpoint.")
    artifacts: ArtifactsStatus | None = Field(None, description="Result locations.")
    datasets: list[DatasetReport] | None = Field(None, description="Per-dataset preflight counts.")
    memory_estimate_gib: float | None = Field(None, description="Estimated memory per GPU, GiB.")
    guard: GuardStatus | None = Field(None, description="Divergence-guard rollbacks (spec.training.guard).")
    cost: CostStatus | None = Field(
        None, description="GPU-seconds, node-seconds, tokens per GPU-hour, estimated cost."
    )
    last_stall: StallStatus | None = Field(
        None, description="The newest pod ended by the hang watchdog (spec.training.stallTimeoutSeconds)."
    )
    evaluation: EvaluationStatus | None = Field(
        None, description="Base vs trained evaluation and the gate's verdict (spec.evaluation)."
    )
    job_name: str | None = Field(None, description="Name of the training batch/v1 Job.")
    spec_hash: str | None = Field(None, description="Hash of the spec the children were built from.")


# ---------------------------------------------------------------------------------------------------- object


class ObjectMeta(BaseModel):
    """The part of metadata kubetune reads; everything else is kept as given."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(..., description="Object name: a DNS label of at most 63 characters.")
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if len(v) > 63:
            raise ValueError(f"{v!r} is {len(v)} characters; a FineTuneJob name is a DNS label of at most 63")
        if not DNS_LABEL.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a DNS label: lower-case letters, digits and '-', starting and ending alphanumeric"
            )
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str | None) -> str | None:
        return None if v is None else check_dns_label(v, what="namespace")


class FineTuneJob(BaseModel):
    """A FineTuneJob custom resource."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["kubetune.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["FineTuneJob"] = Field(KIND)
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None
