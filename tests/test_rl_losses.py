"""Closed-form and TRL-parity checks of the method losses (SPEC §8)."""
import math
from types import SimpleNamespace

import pytest
import torch

from charter.train.losses import (bradley_terry_loss, dpo_loss, length_normalized_dpo_loss, log1mexp, orpo_loss,
                                  simpo_loss)
from charter.train.rl_losses import (AdaptiveKL, gae, generalized_jsd, group_advantages, k3_kl, masked_mean,
                                     ppo_policy_loss, ppo_value_loss, whiten)

D = torch.float64


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_bradley_terry_margin_centring_and_soft_labels():
    rc, rr = torch.tensor([2.0, 0.0, -1.0], dtype=D), torch.tensor([1.0, 0.0, 1.0], dtype=D)
    assert bradley_terry_loss(rc, rr).tolist() == pytest.approx([-math.log(_sig(1)), math.log(2), -math.log(_sig(-2))])
    m = torch.tensor([0.5, 1.0, 0.0], dtype=D)
    assert bradley_terry_loss(rc, rr, m).tolist() == pytest.approx(
        [-math.log(_sig(0.5)), -math.log(_sig(-1)), -math.log(_sig(-2))])
    centred = bradley_terry_loss(rc, rr, center_coef=0.01) - bradley_terry_loss(rc, rr)
    assert centred.tolist() == pytest.approx([0.01 * 9, 0.0, 0.0])
    p = torch.tensor([0.7, 1.0, 0.0], dtype=D)
    assert bradley_terry_loss(rc, rr, label_prob=p).tolist() == pytest.approx(
        [-(0.7 * math.log(_sig(1)) + 0.3 * math.log(_sig(-1))), math.log(2), -math.log(_sig(2))])


def test_length_normalized_dpo_divides_each_side_by_its_length():
    pc, pr = torch.tensor([-10.0, -4.0], dtype=D), torch.tensor([-30.0, -2.0], dtype=D)
    rc, rr = torch.tensor([-12.0, -4.0], dtype=D), torch.tensor([-20.0, -3.0], dtype=D)
    nc, nr = torch.tensor([2, 4]), torch.tensor([10, 1])
    out = length_normalized_dpo_loss(pc, pr, rc, rr, nc, nr, beta=0.5)
    deltas = [(-10 + 12) / 2 - (-30 + 20) / 10, 0 / 4 - (-2 + 3) / 1]
    assert out.losses.tolist() == pytest.approx([-math.log(_sig(0.5 * d)) for d in deltas])
    # a long rejected reply's summed log-ratio no longer dominates: summed DPO sees a bigger margin
    assert dpo_loss(pc, pr, rc, rr, 0.5).losses[0] < out.losses[0]


def test_orpo_closed_form_and_trl_parity():
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer
    from trl.experimental.orpo.orpo_trainer import log1mexp as trl_log1mexp

    c, r = torch.tensor([-0.2, -1.5, -3.0], dtype=D), torch.tensor([-0.9, -0.1, -3.0], dtype=D)
    losses, log_odds = orpo_loss(c, r, lam=0.1)
    for i in range(3):
        pc, pr = math.exp(c[i]), math.exp(r[i])
        lo = math.log(pc / (1 - pc)) - math.log(pr / (1 - pr))
        assert log_odds[i].item() == pytest.approx(lo)
        assert losses[i].item() == pytest.approx(-c[i].item() - 0.1 * math.log(_sig(lo)))
    x = torch.tensor([-1e-6, -0.5, -0.7, -30.0], dtype=D)
    assert torch.allclose(log1mexp(x), trl_log1mexp(x))
    fake = SimpleNamespace(beta=0.1, accelerator=SimpleNamespace(device="cpu"))
    trl_ratio_term = ORPOTrainer.odds_ratio_loss(fake, c, r)[0]  # beta * log s(log odds); TRL subtracts it
    assert torch.allclose((losses + c).float(), -trl_ratio_term)


def test_simpo_closed_form():
    c, r = torch.tensor([-0.5, -2.0], dtype=D), torch.tensor([-1.0, -1.0], dtype=D)
    assert simpo_loss(c, r, beta=2.0, gamma=1.0).tolist() == pytest.approx(
        [-math.log(_sig(2 * 0.5 - 1)), -math.log(_sig(2 * -1.0 - 1))])


def test_gae_closed_form_and_returns():
    r = torch.tensor([[1.0, 0.0, 2.0]], dtype=D)
    v = torch.tensor([[0.5, 1.0, 0.25]], dtype=D)
    g, lam = 0.9, 0.8
    d = [1 + g * 1.0 - 0.5, 0 + g * 0.25 - 1.0, 2 - 0.25]
    want = [d[0] + g * lam * d[1] + (g * lam) ** 2 * d[2], d[1] + g * lam * d[2], d[2]]
    adv, ret = gae(r, v, gamma=g, lam=lam)
    assert adv[0].tolist() == pytest.approx(want)
    assert ret[0].tolist() == pytest.approx([a + b for a, b in zip(want, v[0].tolist())])
    # gamma = lam = 1: the advantage is the reward-to-go minus the value
    adv1, _ = gae(r, v, 1.0, 1.0)
    assert adv1[0].tolist() == pytest.approx([3 - 0.5, 2 - 1.0, 2 - 0.25])


def test_ppo_policy_loss_clips_both_sides():
    old = torch.zeros(1, 4, dtype=D)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 3.0]], dtype=D))
    adv = torch.tensor([[1.0, -1.0, 2.0, -1.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clipfrac = ppo_policy_loss(new, old, adv, mask, clip=0.2)
    # token 0: ratio 1.5, A>0 -> min(1.5, 1.2) A = 1.2; token 1: ratio .5, A<0 -> max(.5, .8)*-1 -> loss .8
    per = [-1.2, 0.8, -2.2]
    assert loss.item() == pytest.approx(sum(per) / 3)
    assert clipfrac.item() == pytest.approx(2 / 3)
    at_one, frac0 = ppo_policy_loss(old, old, adv, mask)  # ratio 1: plain -A mean, nothing clipped
    assert at_one.item() == pytest.approx(-(1 - 1 + 2) / 3) and frac0.item() == 0


def test_ppo_value_loss_takes_the_worse_of_clipped_and_not():
    v, old = torch.tensor([[1.0, 0.0]], dtype=D), torch.tensor([[0.0, 0.0]], dtype=D)
    ret = torch.tensor([[2.0, 1.0]], dtype=D)
    loss, frac = ppo_value_loss(v, old, ret, torch.ones(1, 2), clip=0.2)
    # token 0: unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> 3.24; token 1: both 1
    assert loss.item() == pytest.approx(0.5 * (3.24 + 1) / 2)
    assert frac.item() == pytest.approx(0.5)


def test_whiten_and_masked_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]], dtype=D)
    m = torch.tensor([[1, 1, 1, 0]])
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    w = whiten(x, m)
    assert w[0, :3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)  # unbiased std of 1,2,3 is 1
    assert whiten(x, m, shift_mean=False)[0, :3].tolist() == pytest.approx([1.0, 2.0, 3.0], abs=1e-6)


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 3.0, 3.0, 3.0], dtype=D)
    std = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0)
    grpo = group_advantages(r, 3).tolist()
    assert grpo[:3] == pytest.approx([(2 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4)])
    assert grpo[3:] == [0.0, 0.0, 0.0]  # a unanimous group teaches nothing
    assert group_advantages(r, 3, "drgrpo").tolist()[:3] == pytest.approx([2 / 3, -1 / 3, -1 / 3])
    assert group_advantages(r, 3, "rloo").tolist()[:3] == pytest.approx([1.0, -0.5, -0.5])
    with pytest.raises(ValueError, match="advantage kind"):
        group_advantages(r, 3, "ppo")


def test_k3_kl_estimator():
    lp, ref = torch.tensor([-1.0, -2.0], dtype=D), torch.tensor([-1.0, -1.0], dtype=D)
    assert k3_kl(lp, ref).tolist() == pytest.approx([0.0, math.e - 1 - 1])
    # on samples from pi its mean is KL(pi || ref): a two-outcome check in closed form
    p, q = torch.tensor([0.7, 0.3], dtype=D), torch.tensor([0.4, 0.6], dtype=D)
    assert (p * k3_kl(p.log(), q.log())).sum().item() == pytest.approx((p * (p / q).log()).sum().item())


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 1.0])
def test_generalized_jsd_closed_form_and_trl_parity(beta):
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7, dtype=D), torch.randn(2, 5, 7, dtype=D)
    labels = torch.tensor([[-100, 1, 2, 3, -100], [4, 5, -100, -100, 6]])
    keep = labels != -100
    ours = generalized_jsd(s[keep], t[keep], beta)
    ps, pt = s[keep].softmax(-1), t[keep].softmax(-1)
    kl = lambda a, b: (a * (a / b).log()).sum(-1)  # noqa: E731
    mix = (1 - beta) * ps + beta * pt
    want = {0.0: kl(pt, ps), 1.0: kl(ps, pt)}.get(beta, beta * kl(pt, mix) + (1 - beta) * kl(ps, mix))
    assert torch.allclose(ours, want)
    trl = GKDTrainer.generalized_jsd_loss(s.float(), t.float(), labels=labels, beta=beta)
    assert ours.mean().item() == pytest.approx(trl.item(), abs=1e-6)


def test_adaptive_kl_moves_toward_target_and_fixed_stays():
    ctl = AdaptiveKL(0.1, target=6.0, horizon=100)
    assert ctl.update(12.0, 10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error clipped at +20%
    assert ctl.update(3.0, 10) < 0.1 * 1.02
    assert AdaptiveKL(0.05).update(100.0, 10) == 0.05
