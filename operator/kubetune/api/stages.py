"""Training stages and the data shape each one needs.

The table is data, not scattered ``if``s: validation, the data pipeline and the
trainer all read :data:`STAGE_CONTRACTS`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Stage(str, enum.Enum):
    PT = "pt"
    SFT = "sft"
    RM = "rm"
    PPO = "ppo"
    DPO = "dpo"
    KTO = "kto"
    ORPO = "orpo"
    GRPO = "grpo"


class DataShape(str, enum.Enum):
    """What a processor produces for a stage (LLaMA-Factory's processor families)."""

    PRETRAIN = "pretrain"  # plain text, packed into blocks
    SUPERVISED = "supervised"  # prompt -> one response
    PAIRWISE = "pairwise"  # prompt -> chosen, rejected
    FEEDBACK = "feedback"  # prompt -> response + desirable/undesirable label (KTO)
    PROMPT_ONLY = "prompt_only"  # prompt, the policy generates (PPO, GRPO)


@dataclass(frozen=True)
class StageContract:
    shape: DataShape
    ranking: bool
    """Datasets must be marked ``ranking: true`` (pairwise) — or must not be."""
    needs_kto_tag: bool = False
    needs_reward_model: bool = False
    needs_ref_model: bool = False
    default_packing: bool = False
    description: str = ""


STAGE_CONTRACTS: dict[Stage, StageContract] = {
    Stage.PT: StageContract(DataShape.PRETRAIN, ranking=False, default_packing=True, description="causal LM on text"),
    Stage.SFT: StageContract(DataShape.SUPERVISED, ranking=False, description="supervised fine-tuning"),
    Stage.RM: StageContract(DataShape.PAIRWISE, ranking=True, description="reward model on chosen/rejected pairs"),
    Stage.DPO: StageContract(DataShape.PAIRWISE, ranking=True, needs_ref_model=True, description="direct preference"),
    Stage.ORPO: StageContract(DataShape.PAIRWISE, ranking=True, description="odds-ratio preference"),
    Stage.KTO: StageContract(
        DataShape.FEEDBACK, ranking=False, needs_kto_tag=True, needs_ref_model=True, description="KTO on labels"
    ),
    Stage.PPO: StageContract(
        DataShape.PROMPT_ONLY,
        ranking=False,
        needs_reward_model=True,
        needs_ref_model=True,
        description="PPO against a reward model",
    ),
    Stage.GRPO: StageContract(
        DataShape.PROMPT_ONLY, ranking=False, needs_reward_model=True, description="group relative policy opt."
    ),
}
