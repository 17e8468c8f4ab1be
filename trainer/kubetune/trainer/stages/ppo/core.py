"""PPO math on padded ``[batch, response_len]`` tensors with a 0/1 ``mask`` of real response tokens.

Pure tensor functions (no model, no I/O), so each is unit-tested on hand-written numbers:
per-token rewards with a KL penalty to the reference policy, generalised advantage estimation,
the clipped policy objective and the clipped value loss (Schulman et al. 2017; Ziegler et al. 2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise to unit variance over the masked entries (mean removed unless ``shift_mean`` is False)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask.long()).max(dim=1).values


def kl_penalized_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``-kl_coef * (logp - ref_logp)``, plus the sequence score on the last real token.

    Returns (rewards, per-token kl), both zero outside the mask.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = last_token_index(mask)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += scores * (mask.sum(dim=1) > 0).to(scores.dtype)
    return rewards, kl


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns by GAE, right to left; positions past the end contribute nothing."""
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        running = running * m  # a padded position neither bootstraps nor accumulates
        advantages[:, t] = running
        next_value = values[:, t] * m
    returns = advantages + values
    return advantages * mask, returns * mask


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate objective, as a loss to minimise."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    stats = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask).item(),
        "approx_kl": masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask).item(),
    }
    return loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> torch.Tensor:
    """Clipped value loss: the worse of the unclipped and the clipped squared error, halved."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    losses = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * masked_mean(losses, mask)


def response_mask(response_ids: torch.Tensor, eos_token_id: int | None, pad_token_id: int | None) -> torch.Tensor:
    """1 for generated tokens up to and including the first EOS; 0 after it (and for padding)."""
    if eos_token_id is None:
        mask = torch.ones_like(response_ids)
        if pad_token_id is not None:
            mask = (response_ids != pad_token_id).long()
        return mask
    is_eos = response_ids == eos_token_id
    after_eos = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
    return (~after_eos).long()


@dataclass
class PpoStats:
    """What one PPO step logs."""

    score: float
    kl: float
    policy_loss: float
    value_loss: float
    clipfrac: float
    approx_kl: float
    response_length: float

    def as_log(self) -> dict[str, Any]:
        return {
            "reward": self.score,
            "kl": self.kl,
            "loss": self.policy_loss + self.value_loss,
            "policy_loss": self.policy_loss,
            "value_loss": self.value_loss,
            "clipfrac": self.clipfrac,
            "approx_kl": self.approx_kl,
            "response_length": self.response_length,
        }
