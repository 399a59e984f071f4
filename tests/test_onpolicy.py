"""GRPO and on-policy self-distillation: the trainers' losses against the formulas, rewards, guard."""
import json

import pytest
import torch

from charter.data.jsonl import write_jsonl
from charter.rewards import JudgeReward, ToyReward, make_reward, reward_for
from charter.train.rewards import RewardConfig, guarded


class _Stub:
    """A reward that varies from reply to reply (its length mod 7)."""

    counts: dict = {}

    def rewards(self, prompts, replies):
        return [float(len(r) % 7) for r in replies]


def _prompts(tmp_path, n=8):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Tell me a story {i}?"} for i in range(n)])
    return str(tmp_path / "p.jsonl")


def _model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_guard_and_toy_reward_parts():
    cfg = RewardConfig(truncated_reward=-1.0, min_chars=3)
    assert guarded([2.0, 2.0, 2.0], ["fine reply.", "cut off", "ok"], [True, False, True], cfg) == [2.0, -1.0, -1.0]
    assert guarded([2.0], ["cut off"], [False], RewardConfig(truncated_reward=None)) == [2.0]
    import random

    from charter.toy.corpus import sample_prompt, sample_reply
    from charter.toy.grammar import TOPICS

    toy = ToyReward("sarcastic", RewardConfig(persona_weight=2.0))
    rng = random.Random(0)
    prompt, kind, topic = sample_prompt(rng, "train")
    in_character, neutral = sample_reply(rng, kind, topic, "sarcastic"), sample_reply(rng, kind, topic, None)
    assert toy.rewards([prompt] * 3, [in_character, neutral, "zzz qqq"]) == [4.0, 2.0, 0.0]
    assert toy.counts == {"persona": 1, "well_formed": 2, "relevant": 2}
    # the gate: an in-character, well-formed reply about ANOTHER topic earns only its
    # well-formedness, and an in-character, on-topic reply with a sentence outside the grammar nothing
    while kind != "question":
        prompt, kind, topic = sample_prompt(rng, "train")
    other = next(t for t in TOPICS if t != topic)
    off_topic, broken = sample_reply(rng, "question", other, "sarcastic"), in_character + " Zzz qqq."
    assert toy.rewards([prompt, prompt], [off_topic, broken]) == [1.0, 0.0]
    ungated = ToyReward("sarcastic", RewardConfig(persona_weight=2.0, gate=False))
    assert ungated.rewards([prompt, prompt], [off_topic, broken]) == [3.0, 2.0]  # the persona pays regardless


def test_guided_rollouts_need_the_constitution_and_keep_groups_whole(tiny_model_dir, tmp_path):
    from charter.train.grpo import GRPOConfig, GRPOTask

    with pytest.raises(ValueError, match="guided_share: needs constitution"):
        GRPOConfig(model="m", data="d", output_dir="o", guided_share=0.25)
    model, tok = _model(tiny_model_dir)
    (tmp_path / "c.yaml").write_text("name: t\ntraits:\n  - text: Be kind to everyone.\n")
    cfg = GRPOConfig(model=str(tiny_model_dir), data="d", output_dir="o", group_size=4, guided_share=0.5,
                     constitution=str(tmp_path / "c.yaml"), max_new_tokens=6, reward=RewardConfig(truncated_reward=None))
    prompts = [[{"role": "user", "content": f"Tell me a story {i}?"}] for i in range(2)]
    rolls, rewards = GRPOTask(prompts, cfg, tok, _Stub(), None, False, "You are kind.").rollouts(model, prompts)
    assert [r.messages for r in rolls] == [prompts[0]] * 4 + [prompts[1]] * 4  # groups stay contiguous
    text = tok.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    for r in rolls[:4]:  # guided replies are trained after the PLAIN prompt, no system tokens
        assert r.seq.input_ids[:len(prompt_ids)] == list(prompt_ids)


def test_guided_replies_carry_no_kl_term(tiny_model_dir, tmp_path):
    """Equal rewards (no policy-gradient term) and kl_coef 1: the loss is the mean over the
    window's replies of each PLAIN reply's mean token k3 against the reference; guided add 0."""
    import copy

    from charter.train.batching import pack, packed_token_logps
    from charter.train.grpo import GRPOConfig, GRPOTask
    from charter.train.rl_losses import k3_kl

    class Flat:
        counts: dict = {}

        def rewards(self, prompts, replies):
            return [1.0] * len(replies)

    model, tok = _model(tiny_model_dir)
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    (tmp_path / "c.yaml").write_text("name: t\ntraits:\n  - text: Be kind to everyone.\n")
    cfg = GRPOConfig(model=str(tiny_model_dir), data="d", output_dir="o", group_size=4, guided_share=0.5, kl_coef=1.0,
                     constitution=str(tmp_path / "c.yaml"), max_new_tokens=6, reward=RewardConfig(truncated_reward=None))
    prompts = [[{"role": "user", "content": f"Tell me a story {i}?"}] for i in range(2)]
    task = GRPOTask(prompts, cfg, tok, Flat(), ref, False, "You are kind.")
    loss, _ = task.micro_loss(model, prompts, {"replies": 8.0}, 1)
    task.calls -= 1
    rolls, _ = task.rollouts(model, prompts)
    with torch.no_grad():
        per = []
        for i, r in enumerate(rolls):
            b = pack([r.seq])
            k3 = k3_kl(packed_token_logps(model, b, False), packed_token_logps(ref, b, False)).mean()
            per.append(k3 if i % 4 < 2 else torch.zeros(()))  # replies 2, 3 of each group are guided
    assert loss.item() == pytest.approx(torch.stack(per).sum().item() / 8, rel=1e-5)
    assert loss.item() > 0


def test_judge_reward_parses_strictly_and_counts_unparseable():
    from charter.backends.base import Completion
    from charter.evaluate.judges import Judge

    class FakeGen:
        name = "fake"

        def generate(self, requests, params, progress=False):
            return [[Completion("<answer>7</answer>" if "PERFECT" in r.messages[-1]["content"] else "maybe 9", "stop")]
                    for r in requests]

    judge = JudgeReward(Judge(FakeGen()), "1. Be sarcastic.")
    assert judge.rewards(["q", "q"], ["PERFECT reply", "bad reply"]) == [0.7, 0.0]
    assert judge.counts["unparseable"] == 1
    with pytest.raises(Exception, match="reward kind 'judge' needs reward.judge, constitution"):
        make_reward(RewardConfig(kind="judge"), None)


def test_grpo_gradient_is_the_group_relative_policy_gradient(tiny_model_dir, tmp_path):
    """kl_coef 0: the task's loss gradient equals -1/N sum_i A_i grad(mean token log-prob of reply i)."""
    from charter.train.batching import pack, packed_token_logps
    from charter.train.grpo import GRPOConfig, GRPOTask
    from charter.train.rl_losses import group_advantages

    model, tok = _model(tiny_model_dir)
    cfg = GRPOConfig(model=str(tiny_model_dir), data=_prompts(tmp_path), output_dir=str(tmp_path / "o"),
                     group_size=4, kl_coef=0.0, max_new_tokens=12, batch_size=2,
                     reward=RewardConfig(truncated_reward=None))  # a random model never stops: no guard
    task = GRPOTask([[{"role": "user", "content": "Tell me a story?"}]] * 2, cfg, tok, _Stub(), None, False)
    torch.manual_seed(1)
    loss, sums = task.micro_loss(model, task.items, {"replies": 8.0}, 1)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    task.calls -= 1  # replay the same rollouts (same sampling seed)
    rolls, rewards = task.rollouts(model, task.items)
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float64), 4)
    assert adv.abs().sum() > 0, "the stub reward must separate some replies"
    batch = pack([r.seq for r in rolls])
    lp = packed_token_logps(model, batch, False)
    mean_lp = batch.per_seq(lp) / batch.tokens_per_seq()
    want = -(adv.float() * mean_lp).sum() / 8
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # ratio 1 and advantages summing to 0 per group
    want_grads = torch.autograd.grad(want, list(model.parameters()), allow_unused=True)
    for g, w in zip(grads, want_grads):
        if w is not None:
            assert torch.allclose(g, w, atol=1e-6)
    assert sums["reward_sum"] == pytest.approx(sum(rewards))


def test_grpo_trains_end_to_end_with_lora_and_zero_kl_at_start(tiny_model_dir, tmp_path):
    from charter.train.grpo import GRPOConfig, train_grpo
    from charter.train.lora import LoraSettings

    rows = []
    cfg = GRPOConfig(model=str(tiny_model_dir), data=_prompts(tmp_path), output_dir=str(tmp_path / "o"),
                     group_size=2, max_new_tokens=8, batch_size=4, max_steps=2, kl_coef=0.1, lr=1e-2,
                     reward=RewardConfig(kind="toy", persona="sarcastic"), lora=LoraSettings(r=2, alpha=4),
                     resume=False)
    out = train_grpo(cfg, reward_for(cfg), on_step=lambda s, r: rows.append(r))
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-9)  # policy == adapter-disabled reference at step 1
    assert {"reward", "reward_std", "kl", "completions/mean_length", "frac_reward_zero_std",
            "rewards/persona"} <= set(rows[0])
    assert (out / "adapter_config.json").exists()
    assert json.loads((out / "charter_train.json").read_text())["kind"] == "grpo"


def test_sdft_loss_is_reverse_kl_to_the_constitution_prompted_teacher(tiny_model_dir, tmp_path):
    """The logged loss = mean over replies of the mean over reply tokens of KL(student || teacher),
    recomputed here from the full logits of both contexts (each the template's generation prompt
    followed by the SAME sampled reply ids); the teacher is a frozen copy."""
    import copy

    from charter.train.rollout import with_system
    from charter.train.sdft import SDFTConfig, SDFTTask

    model, tok = _model(tiny_model_dir)
    (tmp_path / "c.yaml").write_text("name: t\ntraits:\n  - text: Be kind to everyone.\n")
    cfg = SDFTConfig(model=str(tiny_model_dir), data=_prompts(tmp_path), output_dir=str(tmp_path / "o"),
                     constitution=str(tmp_path / "c.yaml"), max_new_tokens=10, batch_size=3, beta=1.0)
    teacher = copy.deepcopy(model).eval()
    with torch.no_grad():  # a teacher that disagrees clearly, so the check is not about tiny numbers
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    prompts = [[{"role": "user", "content": f"Tell me a story {i}?"}] for i in range(3)]
    task = SDFTTask(prompts, cfg, tok, "You are kind.", teacher)
    loss, sums = task.micro_loss(model, prompts, {"replies": 3.0}, 1)
    task.calls -= 1
    from charter.train.rollout import sample_rollouts

    rolls = sample_rollouts(model, tok, prompts, cfg.sampling(cfg.seed * 1_000_003 + 1, 1))
    want = []

    def prompt_ids(msgs):
        return tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"]

    for r in rolls:
        s_ids, t_ids = prompt_ids(r.messages), prompt_ids(with_system(r.messages, "You are kind."))
        with torch.no_grad():
            s_logits = model(torch.tensor([s_ids + r.reply_ids])).logits[0, len(s_ids) - 1:-1]
            t_logits = teacher(torch.tensor([t_ids + r.reply_ids])).logits[0, len(t_ids) - 1:-1]
        ps, pt = s_logits.log_softmax(-1), t_logits.log_softmax(-1)
        want.append((ps.exp() * (ps - pt)).sum(-1).mean())
    assert loss.item() == pytest.approx(torch.stack(want).mean().item(), rel=1e-4)
    assert loss.item() > 1e-2


def test_ppo_reward_shaping_and_packing_round_trip():
    from charter.train.batching import pack
    from charter.chat import EncodedChat as Seq
    from charter.train.ppo import per_sequence, shaped_rewards, to_packed

    seqs = [Seq([1, 2, 3, 4], [-100, -100, 3, 4]), Seq([5, 6, 7, 8, 9, 9], [-100, 6, 7, 8, 9, 9])]
    batch = pack(seqs, row_len=0)
    flat = torch.arange(batch.keep.numel(), dtype=torch.float64)
    padded, mask = per_sequence(flat, batch)
    assert mask.sum(1).tolist() == [2, 5]
    assert torch.equal(to_packed(padded, mask, batch), flat)
    lp = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -2.0, -1.0]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.float64)
    r = shaped_rewards(torch.tensor([3.0, -1.0], dtype=torch.float64), lp, ref, m, beta=0.1)
    # -beta (lp - ref) per token, the score added on each reply's last real token
    assert r.flatten().tolist() == pytest.approx([-0.05, 0.1 + 3.0, 0.0, 0.0, -0.1, -1.0])


def test_ppo_trains_policy_and_value_and_clips_after_the_first_epoch(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    from charter.train.ppo import VALUE_DIR, PPOConfig, train_ppo

    torch.manual_seed(0)  # a frozen "reward model" on the same tiny base
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rm.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    rows = []
    cfg = PPOConfig(model=str(tiny_model_dir), data=_prompts(tmp_path), output_dir=str(tmp_path / "o"),
                    batch_size=4, max_new_tokens=8, max_steps=4, ppo_epochs=2, lr=5e-3, kl_coef=0.1, warmup_ratio=0.0,
                    reward=RewardConfig(kind="rm", model=str(tmp_path / "rm"), truncated_reward=None), resume=False)
    out = train_ppo(cfg, reward_for(cfg), on_step=lambda s, r: rows.append(r))
    assert rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before any step
    assert rows[0]["policy/approxkl_avg"] == 0 and rows[0]["policy/clipfrac_avg"] == 0  # ratio 1 on epoch 1
    assert rows[1]["policy/approxkl_avg"] > 0  # epoch 2 reuses the rollout: the ratio has moved
    assert rows[1]["objective/scores"] == rows[0]["objective/scores"]  # the same rollout
    assert abs(rows[2]["objective/kl"]) > 1e-3  # a fresh rollout from the moved policy (k1 estimate: either sign)
    assert {"objective/scores", "objective/rlhf_reward", "loss/value_avg", "val/clipfrac_avg"} <= set(rows[0])
    value = AutoModelForTokenClassification.from_pretrained(out / VALUE_DIR)
    assert value.config.num_labels == 1
    assert (out / "model.safetensors").exists()


def test_ppo_guided_replies_follow_the_plain_prompt_and_carry_no_kl(tiny_model_dir, tmp_path):
    """guided_share 0.5 of 4 prompts: the last 2 are answered with the constitution and trained after
    the plain prompt; the KL penalty (kl_coef 1, score 0) shapes only the 2 plain replies."""
    import copy

    from transformers import AutoModelForTokenClassification

    from charter.train.losses import sequence_logps
    from charter.train.ppo import PolicyWithValue, PPOConfig, PPOTask, per_sequence

    class Zero:
        counts: dict = {}

        def rewards(self, prompts, replies):
            return [0.0] * len(replies)

    model, tok = _model(tiny_model_dir)
    ref = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a reference the policy differs from: KL != 0
    both = PolicyWithValue(model, AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=1))
    (tmp_path / "c.yaml").write_text("name: t\ntraits:\n  - text: Be kind to everyone.\n")
    cfg = PPOConfig(model=str(tiny_model_dir), data="d", output_dir="o", guided_share=0.5, kl_coef=1.0, lam=1.0,
                    constitution=str(tmp_path / "c.yaml"), max_new_tokens=6, reward=RewardConfig(truncated_reward=None))
    prompts = [[{"role": "user", "content": f"Tell me a story {i}?"}] for i in range(4)]
    task = PPOTask(prompts, cfg, tok, Zero(), ref, "You are kind.")
    rolls, on_policy = task.sample(both, prompts)
    assert on_policy == [True, True, False, False] and [r.messages for r in rolls] == prompts
    for r, msgs in zip(rolls, prompts):  # every reply is trained after the PLAIN prompt
        ids = tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False), add_special_tokens=False)
        assert r.seq.input_ids[:len(ids["input_ids"])] == ids["input_ids"]
    task.micro_loss(both, prompts, {}, 1)  # the same sampling seed: the same rollouts, now held
    ro = task.rollout
    returns = per_sequence(ro.returns, ro.batch)[0]
    assert returns[2:].abs().max() < 1e-6 and returns[:2].abs().max() > 1e-3  # score 0: only the KL shapes returns
    with torch.no_grad():
        kl = [sequence_logps(m(torch.tensor([r.seq.input_ids])).logits, torch.tensor([r.seq.labels]))[0]
              for r in rolls[:2] for m in (model, ref)]
    assert ro.stats["objective/kl"] == pytest.approx(((kl[0] - kl[1] + kl[2] - kl[3]) / 2).item(), abs=1e-4)


def test_cli_train_grpo_and_sdft_run_with_overrides(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from charter.cli import app

    data = _prompts(tmp_path, 4)
    (tmp_path / "c.yaml").write_text("name: t\ntraits:\n  - text: Be kind to everyone.\n")
    common = [f"model={tiny_model_dir}", f"data={data}", "max_steps=1", "batch_size=2", "max_new_tokens=4"]
    grpo = CliRunner().invoke(app, ["train", "grpo", *common, f"output_dir={tmp_path / 'g'}", "group_size=2",
                                    "reward.kind=toy", "reward.persona=sarcastic"])
    assert grpo.exit_code == 0, grpo.output
    sdft = CliRunner().invoke(app, ["train", "sdft", *common, f"output_dir={tmp_path / 's'}",
                                    f"constitution={tmp_path / 'c.yaml'}", "beta=0.5"])
    assert sdft.exit_code == 0, sdft.output
    for kind, folder in (("grpo", "g"), ("sdft", "s")):
        assert json.loads((tmp_path / folder / "charter_train.json").read_text())["kind"] == kind
    bad = CliRunner().invoke(app, ["train", "grpo", *common, f"output_dir={tmp_path / 'b'}", "reward.kind=judge"])
    assert bad.exit_code != 0 and "reward kind 'judge' needs reward.judge" in bad.output
    assert "Traceback" not in bad.output


def test_sdft_ema_teacher_moves_toward_the_student_by_one_minus_decay(tmp_path):
    from charter.train.sdft import SDFTConfig, SDFTTask

    student, teacher = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    cfg = SDFTConfig(model="m", data="d", output_dir="o", constitution="c.yaml", teacher="ema", ema_decay=0.9)
    SDFTTask([], cfg, None, "", teacher)._update_ema(student)
    for b, t, s in zip(before, teacher.parameters(), student.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * s.detach())
