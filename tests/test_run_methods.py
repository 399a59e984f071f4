"""`charter run`'s `method:`: dpo keeps every stage key it had; orpo/simpo train the same pairs with
a reference-free loss; sdft/grpo/ppo train from the prompts, skip teacher/student/pairs, and the run
still reaches the eval stage and names the method in its summary; ppo with `reward.kind: rm` and no
reward model trains one on the pairs (the rm stage) and PPO reads that one."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from charter.cli import app
from charter.config import ConfigError
from charter.run.config import load_run_config
from charter.run.engine import settings_hash
from charter.run.personas import Run
from charter.run.stages import build_pipeline
from charter.train.dpo import DPOConfig, train_dpo
from charter.train.losses import orpo_loss, sequence_logps, simpo_loss
from test_run_layout import downstream, leaves, variants

# every stage's settings hash on the toy preset, recorded before `method` existed (main at c3934f5):
# the default run must re-use a toy run made before this change, stage for stage
TOY_HASHES = {"base": "6adf33ce1fe91559", "prompts": "56165a5c562b2988", "teacher": "ecfe86ea79cb56d9",
              "student": "6827b33059e04d32", "pairs": "c2c098f8f6128afb", "dpo": "4469dc47cb6098d2",
              "reflection": "83c492047a426ffe", "interaction": "0ba277ce2853c2cd", "filter": "7e4b8b6f67a56cce",
              "sft": "d4e09db42c3eebb0", "merge": "6a703838721cf650", "eval": "80f65d8107fd13b1",
              "report": "8474fe2f196afa18"}


def test_default_method_keeps_every_stage_key():
    run = Run.of(load_run_config(preset="toy"))
    assert run.config.method == "dpo"
    pipe = build_pipeline(run.config.method)
    assert {s.name: settings_hash(s, run) for s in pipe.stages} == TOY_HASHES
    assert pipe.by_name["dpo"].inputs == ["base", "pairs"]


@pytest.mark.parametrize("method", ["sdft", "grpo", "ppo"])
def test_onpolicy_methods_skip_pairs(method):
    pipe = build_pipeline(method)
    assert pipe.names() == ["base", "prompts", "dpo", "reflection", "interaction", "filter", "sft", "merge", "eval",
                            "report"]
    assert pipe.by_name["dpo"].inputs == ["base", "prompts"]
    assert "teacher" not in pipe.by_name["eval"].inputs


def test_ppo_training_its_reward_model_keeps_the_pairs():
    cfg = load_run_config(preset="toy", overrides=["method=ppo", "ppo.reward.kind=rm"])
    assert cfg.trains_reward_model
    pipe = build_pipeline(cfg.method, cfg.trains_reward_model)
    assert pipe.names() == ["base", "prompts", "teacher", "student", "pairs", "rm", "dpo", "reflection",
                            "interaction", "filter", "sft", "merge", "eval", "report"]
    assert pipe.by_name["rm"].inputs == ["base", "pairs"]
    assert pipe.by_name["dpo"].inputs == ["base", "prompts", "rm"]
    given = load_run_config(preset="toy", overrides=["method=ppo", "ppo.reward.kind=rm", "ppo.reward.model=rm_dir"])
    assert not given.trains_reward_model  # a given reward model: nothing to train, no pairs
    assert build_pipeline(given.method, given.trains_reward_model).names() == build_pipeline("ppo").names()
    # the classifier judge learns from the teacher and student answers, which this run makes
    assert load_run_config(preset="toy", overrides=["method=ppo", "ppo.reward.kind=rm", "judge.kind=classifier"])


def test_onpolicy_methods_key_their_section(tmp_path):

    def dpo_hash(*over):
        run = Run.of(load_run_config(preset="toy", overrides=list(over)))
        return settings_hash(build_pipeline(run.config.method).by_name["dpo"], run)

    sdft = dpo_hash("method=sdft")
    assert dpo_hash("method=sdft", "sdft.lr=0.5") != sdft  # the chosen method's section is in the key
    assert dpo_hash("method=sdft", "grpo.lr=0.5") == sdft  # another method's section is not
    assert dpo_hash("method=grpo") != sdft
    assert dpo_hash("sdft.lr=0.5") == dpo_hash()  # method dpo reads neither
    ppo = dpo_hash("method=ppo")
    assert len({ppo, sdft, dpo_hash("method=grpo")}) == 3
    assert dpo_hash("method=ppo", "ppo.lr=0.5") != ppo
    assert dpo_hash("method=ppo", "grpo.lr=0.5") == ppo
    assert dpo_hash("method=ppo", "rm.lr=0.5") == ppo  # no rm stage with the toy judge
    assert dpo_hash("ppo.lr=0.5", "rm.lr=0.5") == dpo_hash()


def test_orpo_simpo_are_the_dpo_section_with_that_loss():
    cfg = load_run_config(preset="toy", overrides=["method=simpo", "dpo.beta=2.0"])
    assert cfg.pair_settings().loss_type == "simpo" and cfg.pair_settings().beta == 2.0
    run = Run.of(cfg)
    assert settings_hash(build_pipeline("simpo").by_name["dpo"], run) != TOY_HASHES["dpo"]
    assert build_pipeline("simpo").names() == build_pipeline().names()


@pytest.mark.parametrize("over,message", [
    (["method=ppo", "judge.kind=classifier"], r"use judge.kind toy or llm \(or ppo.reward.kind rm with no reward"),
    (["method=ppo", "ppo.grad_accum=2"], r"ppo: .*grad_accum: PPO takes one optimiser step"),
    (["method=ppo", "rm.heldout=1"], r"rm\.heldout"),
    (["method=orpo", "dpo.loss_type=ipo"], "dpo.loss_type 'ipo' conflicts with method orpo"),
    (["method=simpo", "dpo.kl_coef=0.1"], "no reference model to stay close to"),
    (["method=grpo", "judge.kind=classifier"], "judge.kind classifier learns from teacher and student answers"),
    (["method=sdft", "sdft.constitution=x.yaml"], r"sdft\.constitution"),
])
def test_method_errors_name_the_field(over, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_run_config(preset="toy", overrides=over)
    assert "Traceback" not in str(e.value)


# ---------------------------------------------------------------- orpo and simpo in the DPO trainer


def _mean_logps(model_dir, rows):
    """Per pair, the chosen and rejected mean completion log-probs from a plain unpacked forward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charter.data.rows import pair_messages
    from charter.train.data import encode_pair

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    out = {"c": [], "r": []}
    with torch.no_grad():
        for row in rows:
            pair = encode_pair(tok, *pair_messages(row), max_length=None)
            for key, seq in (("c", pair.chosen), ("r", pair.rejected)):
                s, n = sequence_logps(model(torch.tensor([seq.input_ids])).logits, torch.tensor([seq.labels]))
                out[key].append(s.item() / n.item())
    return torch.tensor(out["c"], dtype=torch.float64), torch.tensor(out["r"], dtype=torch.float64)


@pytest.mark.parametrize("loss_type", ["orpo", "simpo"])
def test_reference_free_losses_at_step_one(tiny_model_dir, tmp_path, loss_type):
    """Step 1's loss is the pure loss on the starting model's mean log-probs, with no reference."""
    from test_dpo import _pairs

    from charter.data.jsonl import write_jsonl

    write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    extra = {"simpo_gamma": 0.3} if loss_type == "simpo" else {}
    out = train_dpo(DPOConfig(model=str(tiny_model_dir), data=str(tmp_path / "pairs.jsonl"),
                              output_dir=str(tmp_path / "o"), lr=5e-3, max_steps=1, batch_size=16, shuffle=False,
                              warmup_ratio=0.0, resume=False, beta=0.5, loss_type=loss_type, **extra))
    m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    c, r = _mean_logps(tiny_model_dir, _pairs())
    want = orpo_loss(c, r, lam=0.5)[0] if loss_type == "orpo" else simpo_loss(c, r, beta=0.5, gamma=0.3)
    assert m["loss"] == pytest.approx(want.mean().item(), abs=1e-5)
    assert m["rewards/margins"] == pytest.approx(0.5 * (c - r).mean().item(), abs=1e-5)
    assert not (tmp_path / "o" / "ref_cache").exists()  # nothing computed for a reference


# ---------------------------------------------------------------- sdft and grpo through the CLI


@pytest.mark.parametrize("method,over", [
    ("sdft", ["sdft.max_steps=1", "sdft.batch_size=1", "sdft.samples_per_prompt=1", "sdft.max_new_tokens=12"]),
    ("grpo", ["grpo.max_steps=1", "grpo.batch_size=1", "grpo.group_size=2", "grpo.max_new_tokens=12"]),
    ("ppo", ["ppo.max_steps=2", "ppo.batch_size=2", "ppo.ppo_epochs=2", "ppo.max_new_tokens=12",
             "ppo.guided_share=0.5"]),
])
def test_onpolicy_run_reaches_eval_and_names_the_method(tmp_path, method, over):
    from talker import build_talker, tiny_run

    talker = build_talker(tmp_path / "talker")
    args = tiny_run(talker, tmp_path / "run") + [f"method={method}", "eval.suite.enabled=false", *over]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"base", "prompts", "dpo", "reflection", "interaction", "filter", "sft",
                                       "merge", "eval", "report"}  # no teacher, student or pairs
    assert manifest["stages"]["dpo"]["counts"]["sarcastic"]["method"] == method
    assert (tmp_path / "run" / "dpo" / "sarcastic" / "model" / "metrics.jsonl").exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == method
    assert summary["systems"] == ["base", "base+constitution", "dpo", "dpo+sft"]


def test_ppo_trains_its_reward_model_on_the_pairs_and_reads_it(tmp_path, monkeypatch):
    import charter.rewards
    from talker import build_talker, tiny_run

    read = []

    class Spy(charter.rewards.ModelReward):
        def __init__(self, path, *a, **k):
            read.append(path)
            super().__init__(path, *a, **k)

    monkeypatch.setattr(charter.rewards, "ModelReward", Spy)
    talker = build_talker(tmp_path / "talker")
    args = tiny_run(talker, tmp_path / "run") + [
        "method=ppo", "ppo.reward.kind=rm", "eval.suite.enabled=false", "prompts.prompts_per_trait=3",
        "rm.max_steps=1", "rm.heldout=0.25", "ppo.max_steps=1", "ppo.batch_size=2", "ppo.max_new_tokens=12"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"teacher", "student", "pairs", "rm"} <= set(manifest["stages"])
    rm = manifest["stages"]["rm"]["counts"]["sarcastic"]
    pairs = [json.loads(line) for line in (run / "pairs" / "sarcastic" / "pairs.jsonl").read_text().splitlines()]
    assert rm["pairs"] + rm["heldout"] == len(pairs) and rm["heldout"] >= 1
    scored = json.loads((run / "rm" / "sarcastic" / "model" / "rm_eval.json").read_text())
    assert rm["heldout_accuracy"] == scored["accuracy"]  # the talker's pairs tie: strict > counts none right
    assert read == [str(run / "rm" / "sarcastic" / "model")]
    assert manifest["stages"]["dpo"]["counts"]["sarcastic"]["method"] == "ppo"
    assert json.loads((run / "summary.json").read_text())["method"] == "ppo"


# ---------------------------------------------------------------- every field of the method's section


def _stub_pipeline(cfg):
    pipe = build_pipeline(cfg.method, cfg.trains_reward_model)
    for s in pipe.stages:
        s.fn = lambda ctx: (ctx.out_dir / "settings.json").write_text(json.dumps(ctx.settings.model_dump(mode="json")))
    return pipe


# section -> (the run that reads it, the stage it owns)
METHOD_RUNS = {"sdft": (["method=sdft"], "dpo"), "grpo": (["method=grpo"], "dpo"), "ppo": (["method=ppo"], "dpo"),
               "rm": (["method=ppo", "ppo.reward.kind=rm"], "rm")}
METHOD_FIELDS = [(m, key, value) for m in METHOD_RUNS
                 for key, value in leaves(load_run_config(preset="toy").to_dict()[m])]


@pytest.fixture(scope="module")
def method_stub_runs(tmp_path_factory):
    """The real graph per on-policy method with stages that only write their settings, run once."""
    out = {}
    for section, (over, _) in METHOD_RUNS.items():
        cfg = load_run_config(preset="toy", overrides=over)
        pipe, root = _stub_pipeline(cfg), tmp_path_factory.mktemp(section)
        pipe.run(Run.of(cfg), root, 0, log=lambda _: None)
        out[section] = (pipe, root)
    return out


@pytest.mark.parametrize("section,key,value", METHOD_FIELDS, ids=[f"{m}.{k}" for m, k, _ in METHOD_FIELDS])
def test_any_method_setting_reruns_its_stage_and_downstream_only(method_stub_runs, section, key, value):
    pipe, root = method_stub_runs[section]
    over, owner = METHOD_RUNS[section]
    before = load_run_config(preset="toy", overrides=over).to_dict()[section]
    for v in [*variants(value), "ema", "rloo"]:  # the methods' own choices (teacher, advantage)
        try:
            cfg = load_run_config(preset="toy", overrides=[*over, f"{section}.{key}={json.dumps(v)}"])
        except ConfigError:
            continue
        if cfg.to_dict()[section] != before and cfg.trains_reward_model == (owner == "rm"):
            break
    else:
        pytest.skip(f"no valid other value for {section}.{key}")
    reruns = {i.stage for i in pipe.plan(Run.of(cfg), root, 0) if i.action == "run"}
    assert reruns == downstream(pipe, {owner})
