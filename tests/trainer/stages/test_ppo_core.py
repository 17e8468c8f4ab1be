"""PPO math on hand-written tensors: KL-penalised rewards, GAE, clipped losses, response masks."""

from __future__ import annotations

import pytest
import torch

from kubetune.trainer.stages.ppo.core import (
    compute_gae,
    kl_penalized_rewards,
    last_token_index,
    masked_mean,
    masked_whiten,
    policy_loss,
    response_mask,
    value_loss,
)


def test_response_mask_keeps_tokens_up_to_first_eos():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 3, 3, 3, 3]])
    assert response_mask(ids, eos_token_id=2, pad_token_id=2).tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
    ]


def test_kl_penalized_rewards_puts_score_on_last_real_token():
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    rewards, kl = kl_penalized_rewards(torch.tensor([3.0, -1.0]), logp, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 3.0, 0.0], [0.0, 0.0, -1.0]]))
    assert last_token_index(mask).tolist() == [1, 2]


def test_gae_matches_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.1, 9.0]])  # the value past the end must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    d2 = 1.0 - 0.1
    d1 = 0.0 + gamma * 0.1 - 0.2
    d0 = 0.0 + gamma * 0.2 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    adv, ret = compute_gae(rewards, values * mask, mask, gamma, lam)
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.1, 0.0]]))


def test_gae_with_gamma_lam_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    mask = torch.ones(1, 3)
    adv, ret = compute_gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(ret, torch.tensor([[6.0, 5.0, 3.0]]))
    torch.testing.assert_close(adv, ret - values)


@pytest.mark.parametrize(
    "advantage, new_logp, expected",
    [
        (1.0, 0.5, -1.2),  # ratio e^0.5 > 1.2: clipped for a positive advantage
        (1.0, -0.5, -0.6065306597),  # ratio < 1: pessimistic (unclipped) term is used
        (-1.0, -0.5, 0.8),  # ratio e^-0.5 < 0.8: clipped for a negative advantage
        (-1.0, 0.1, 1.1051709181),
    ],
)
def test_policy_loss_clips_like_ppo(advantage, new_logp, expected):
    logp = torch.tensor([[new_logp]])
    loss, stats = policy_loss(logp, torch.zeros(1, 1), torch.tensor([[advantage]]), torch.ones(1, 1), clip=0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= stats["clipfrac"] <= 1.0


def test_policy_loss_ignores_masked_tokens_and_has_gradient():
    logp = torch.tensor([[0.0, 5.0]], requires_grad=True)
    loss, _ = policy_loss(logp, torch.zeros(1, 2), torch.tensor([[1.0, 100.0]]), torch.tensor([[1.0, 0.0]]), 0.2)
    loss.backward()
    assert loss.item() == pytest.approx(-1.0)
    assert logp.grad[0, 1] == 0 and logp.grad[0, 0] != 0


def test_value_loss_takes_the_worse_of_clipped_and_unclipped():
    old = torch.tensor([[0.0]])
    ret = torch.tensor([[1.0]])
    # moving from 0 to 0.5 is clipped to 0.2: clipped error 0.64 > unclipped 0.25
    assert value_loss(torch.tensor([[0.5]]), old, ret, torch.ones(1, 1), 0.2).item() == pytest.approx(0.32)
    assert value_loss(torch.tensor([[0.1]]), old, ret, torch.ones(1, 1), 0.2).item() == pytest.approx(0.405)


def test_masked_whiten_and_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert w[0, 3].item() == 0.0
