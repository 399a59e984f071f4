"""Loss maths against SPEC §4's worked example and hand formulas."""
import math

import pytest
import torch

from charter.train.losses import (DPOLossOutput, dpo_loss, dpo_metrics, nll_loss, sequence_logps,
                                  sft_loss, squared_kl, token_logps)

PC = torch.tensor([-0.5, -10.0, -1.0], dtype=torch.float64)
PR = torch.tensor([-0.1, -30.0, -21.0], dtype=torch.float64)
RC = torch.tensor([-0.5, -10.1, -0.1], dtype=torch.float64)
RR = torch.tensor([-0.1, -20.1, -0.1], dtype=torch.float64)


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_spec_worked_example():
    out = dpo_loss(PC, PR, RC, RR, beta=0.1)
    assert out.losses.tolist() == pytest.approx([0.693147, 0.313262, 0.126928], abs=1e-6)
    assert out.losses.mean().item() == pytest.approx(0.377779, abs=1e-6)
    m = dpo_metrics(out)
    assert m["rewards/chosen"] == pytest.approx(-0.026667, abs=1e-6)
    assert m["rewards/rejected"] == pytest.approx(-1.026667, abs=1e-6)
    assert m["rewards/margins"] == pytest.approx(1.0, abs=1e-9)
    # pair 0 is a tie (both rewards 0): strict > counts it wrong
    assert m["rewards/accuracies"] == pytest.approx(2 / 3, abs=1e-4)


def test_step_one_policy_equals_reference_is_ln2():
    x = torch.randn(5, dtype=torch.float64) * 10
    y = torch.randn(5, dtype=torch.float64) * 10
    out = dpo_loss(x, y, x.clone(), y.clone(), beta=0.3)
    assert torch.allclose(out.losses, torch.full((5,), math.log(2), dtype=torch.float64))


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.2)])
def test_variants_against_hand_formulas(beta, eps):
    deltas = [0.0, 10.0, 20.0]
    sig = dpo_loss(PC, PR, RC, RR, beta, "sigmoid", label_smoothing=eps).losses.tolist()
    assert sig == pytest.approx([-(1 - eps) * math.log(_sig(beta * d)) - eps * math.log(_sig(-beta * d))
                                 for d in deltas])
    rob = dpo_loss(PC, PR, RC, RR, beta, "robust", label_smoothing=eps).losses.tolist()
    assert rob == pytest.approx([(-(1 - eps) * math.log(_sig(beta * d)) + eps * math.log(_sig(-beta * d)))
                                 / (1 - 2 * eps) for d in deltas])
    hin = dpo_loss(PC, PR, RC, RR, beta, "hinge").losses.tolist()
    assert hin == pytest.approx([max(0.0, 1 - beta * d) for d in deltas])
    nc, nr = torch.tensor([1.0, 4.0, 5.0]), torch.tensor([2.0, 10.0, 7.0])
    ipo = dpo_loss(PC, PR, RC, RR, beta, "ipo", chosen_tokens=nc, rejected_tokens=nr).losses.tolist()
    cr, rr = (PC - RC).tolist(), (PR - RR).tolist()
    assert ipo == pytest.approx([(cr[i] / nc[i].item() - rr[i] / nr[i].item() - 1 / (2 * beta)) ** 2
                                 for i in range(3)])


def test_ipo_requires_token_counts_and_unknown_type_fails():
    with pytest.raises(ValueError, match="ipo needs"):
        dpo_loss(PC, PR, RC, RR, 0.1, "ipo")
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(PC, PR, RC, RR, 0.1, "kto")


def test_soft_label_is_bce_on_margin():
    p = torch.tensor([0.5, 0.9, 0.3], dtype=torch.float64)
    got = dpo_loss(PC, PR, RC, RR, 0.1, label_prob=p).losses.tolist()
    want = [-(pi * math.log(_sig(0.1 * d)) + (1 - pi) * math.log(_sig(-0.1 * d)))
            for pi, d in zip(p.tolist(), [0.0, 10.0, 20.0])]
    assert got == pytest.approx(want)
    # a hard label of 1 is plain sigmoid DPO
    hard = dpo_loss(PC, PR, RC, RR, 0.1, label_prob=torch.ones(3, dtype=torch.float64)).losses
    assert torch.allclose(hard, dpo_loss(PC, PR, RC, RR, 0.1).losses)


def test_sequence_logps_sums_completion_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, -100, 6, -100]])
    s, n = sequence_logps(logits, labels)
    lp = torch.log_softmax(logits, -1)
    want0 = lp[0, 1, 3] + lp[0, 2, 4] + lp[0, 3, 1]  # logits at i predict labels at i+1
    want1 = lp[1, 0, 2] + lp[1, 2, 6]
    assert torch.allclose(s, torch.stack([want0, want1]))
    assert n.tolist() == [3, 2]
    assert token_logps(logits[:, :1], torch.full((2, 1), -100)).abs().sum() == 0


def test_nll_and_squared_kl():
    assert nll_loss(torch.tensor([-6.0]), torch.tensor([3])).item() == pytest.approx(2.0)
    pol = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -9.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert squared_kl(pol, ref, mask).item() == pytest.approx((0.25 + 0.0) / 2)


def test_sft_loss_is_window_token_mean():
    # two micro-batches of a window: 3 + 1 tokens; summed micro losses = mean over the 4 tokens
    a, b = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-6.0])
    total = sft_loss(a, 4) + sft_loss(b, 4)
    assert total.item() == pytest.approx(3.0)
    assert isinstance(DPOLossOutput(a, a, a).losses, torch.Tensor)
