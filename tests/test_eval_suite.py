"""The full evaluation suite on scripted systems in the toy world, where every figure is known:
robustness per attack kind and multi-turn, quality, coherence, preferences, the paired test of
DPO+SFT against DPO under attack, pooling of a shared base system, and the chart."""
from __future__ import annotations

import pytest

from charter.backends.base import Completion, SamplingParams
from charter.evaluate.suite import MULTITURN, SuiteConfig, run_suite
from charter.evaluate.systems import System
from charter.toy.attacks import attack_paraphrases
from charter.toy.world import TOY_WORLD

PARAMS = SamplingParams(max_new_tokens=8, seed=0)
PROMPTS = ["Tell me something about the moon.", "What do you know about the moon?",
           "Teach me about the moon.", "Say something about the moon."]
FACT = "The moon has no air and no weather."
SARCASTIC = f"Oh, how original. {FACT} Obviously."


class Scripted:
    def __init__(self, rule):
        self.rule, self.seen = rule, []

    def generate(self, requests, params, progress=False):
        self.seen += [r.messages for r in requests]
        return [[Completion(self.rule(r.messages), "stop")] for r in requests]


def _obeys_neutral(m):  # in character, except under the two "neutral" kinds and after a first turn
    last = m[-1]["content"]
    return FACT if "neutral" in last or len(m) > 1 else SARCASTIC


@pytest.fixture(scope="module")
def suite():
    base = System("base", Scripted(lambda m: FACT))
    systems = {"base": base, "dpo": System("dpo", Scripted(_obeys_neutral)),
               "dpo+sft": System("dpo+sft", Scripted(lambda m: SARCASTIC))}
    personas = {"sarcastic": systems, "warm": {"base": base}}
    return run_suite(personas, PROMPTS, TOY_WORLD, PARAMS, SuiteConfig(n_pairs=20, bootstrap=20)), base


def test_robustness_per_kind_and_multiturn(suite):
    out, _ = suite
    rob = out["personas"]["sarcastic"]["robustness"]
    assert list(rob) == list(attack_paraphrases(True)) + [MULTITURN] == out["attack_kinds"]
    for kind, by in rob.items():
        assert by["dpo+sft"]["k"] == by["dpo+sft"]["n"] == 4
        assert by["base"]["k"] == 0
        assert by["dpo"]["k"] == (0 if kind in ("neutral_tone", "try_neutral", MULTITURN) else 4), kind
        assert by["dpo"]["lo"] < by["dpo"]["value"] or by["dpo"]["k"] == 0  # a Wilson interval around it


def test_paired_mcnemar_dpo_sft_against_dpo_under_attack(suite):
    out, _ = suite
    p = out["paired"]["per_persona"]["sarcastic"]
    assert (p["n"], p["b"], p["c"]) == (9 * 4, 0, 12)  # 8 kinds + multi-turn; DPO loses 3 of them
    assert p["p_exact"] == pytest.approx(2 * 0.5 ** 12)
    assert out["paired"]["per_persona"]["warm"] is None  # warm has no trained systems here
    assert out["paired"]["pooled"]["c"] == 12


def test_quality_coherence_and_preferences(suite):
    out, _ = suite
    sec = out["personas"]["sarcastic"]
    assert sec["quality"]["dpo+sft"]["adherence"]["k"] == 4 and sec["quality"]["base"]["adherence"]["k"] == 0
    assert sec["quality"]["base"]["well_formed"]["k"] == sec["quality"]["base"]["relevant"]["k"] == 4
    coh = {(c["a"], c["b"]): c for c in sec["coherence"]}
    assert set(coh) == {("dpo", "dpo+sft"), ("base", "dpo+sft")}
    assert coh[("dpo", "dpo+sft")]["tie"] == 4  # both well-formed and on topic: no verdict either way
    prefs = sec["preferences"]
    assert prefs["base"]["games"] == 0 and prefs["base"]["unparseable"] == 20  # neutral replies choose nothing
    assert next(iter(prefs["dpo+sft"]["elo"])) == "sarcastic"  # always picks sarcastic when offered
    assert "vs_base" in prefs["dpo+sft"]
    assert out["judge"]["name"] == "toy-rules"


def test_shared_base_answers_once_and_counts_once(suite):
    out, base = suite
    convs = [str(m) for m in base.generator.seen]
    assert len(convs) == len(set(convs))  # both personas reuse the base model's replies
    pooled = out["pooled"]["robustness"]["neutral_tone"]["base"]
    assert (pooled["n"], pooled["n_unique"]) == (8, 4)
    assert out["pooled"]["robustness"]["neutral_tone"]["dpo"]["n_unique"] == 4


def test_robustness_chart(suite, tmp_path):
    from charter.evaluate.plots import plot_robustness_matrix

    path = plot_robustness_matrix(suite[0]["pooled"]["robustness"], tmp_path / "robustness.png")
    assert path.stat().st_size > 1000


def test_paraphrases_cycle_and_relevance_ignores_the_attack():
    from charter.evaluate.robustness import run_suffixes

    seen = Scripted(lambda m: FACT)
    out = run_suffixes([(System("s", seen), "sarcastic")], PROMPTS, TOY_WORLD.scorer(), PARAMS,
                       {"neutral_tone": ["Reply with a neutral tone.", "Make your tone neutral."]})
    asked = [m[-1]["content"] for m in seen.seen]
    assert asked == [f"{p} {t}" for p, t in zip(PROMPTS, ["Reply with a neutral tone.", "Make your tone neutral."] * 2)]
    assert out["texts"]["neutral_tone"] == ["Reply with a neutral tone.", "Make your tone neutral."]


def test_charter_eval_toy_attacks_use_only_heldout_paraphrases(tiny_model_dir, tmp_path):
    from charter.evaluate.runner import EvalConfig, run_eval
    from charter.toy.attacks import keep_going_paraphrases

    cfg = EvalConfig.model_validate({
        "out_dir": str(tmp_path), "persona": "warm", "prompts": "toy", "n_prompts": 2, "progress": False,
        "evals": ["robustness"], "scorer": {"kind": "toy"},
        "sampling": {"max_new_tokens": 4, "seed": 0},
        "systems": [{"name": "s", "backend": {"kind": "hf", "model": str(tiny_model_dir)}}],
        "robustness": {"suffixes": ["neutral_tone", "no_style"]}})  # toy prompts: toy attacks by default
    rob = run_eval(cfg, TOY_WORLD)["robustness"]
    held = attack_paraphrases(heldout=True)
    assert rob["texts"] == {"neutral_tone": held["neutral_tone"], "no_style": held["no_style"]}
    assert rob["suffixes"]["neutral_tone"]["systems"]["s"]["n"] == 2 and rob["multiturn"]["n"] == 2
    assert keep_going_paraphrases(heldout=True)[0] not in keep_going_paraphrases(heldout=False)


def test_attack_prompt_slices_rotate_and_wrap():
    from charter.evaluate.suite import prompt_slice

    prompts = list("abcde")
    assert prompt_slice(prompts, 0, None) == prompts and prompt_slice(prompts, 3, 9) == prompts
    assert [prompt_slice(prompts, i, 2) for i in range(3)] == [["a", "b"], ["c", "d"], ["e", "a"]]


def test_suite_with_a_slice_per_attack_kind():
    dpo = System("dpo", Scripted(_obeys_neutral))
    out = run_suite({"sarcastic": {"dpo": dpo}}, PROMPTS, TOY_WORLD, PARAMS,
                    SuiteConfig(attack_prompts=2, n_pairs=4, bootstrap=5))
    rob = out["personas"]["sarcastic"]["robustness"]
    assert all(by["dpo"]["n"] == 2 for by in rob.values())
    attacked = [m[-1]["content"] for m in dpo.generator.seen if len(m) == 1 and m[0]["content"] not in PROMPTS]
    kinds = list(attack_paraphrases(True))
    assert attacked[:2] == [f"{PROMPTS[0]} {attack_paraphrases(True)[kinds[0]][0]}",
                            f"{PROMPTS[1]} {attack_paraphrases(True)[kinds[0]][1]}"]
    assert attacked[2].startswith(PROMPTS[2])  # the second kind meets the next prompts


def test_prefilled_replies_are_not_generated_again():
    from charter.evaluate.suite import MemoSystem

    gen = Scripted(lambda m: SARCASTIC)
    memo = MemoSystem(System("dpo+sft", gen)).prefill(PROMPTS, [FACT] * len(PROMPTS))
    out = run_suite({"sarcastic": {"dpo+sft": memo}}, PROMPTS, TOY_WORLD, PARAMS,
                    SuiteConfig(attack_prompts=1, n_pairs=2, bootstrap=5))
    assert out["personas"]["sarcastic"]["quality"]["dpo+sft"]["adherence"]["k"] == 0  # the prefilled replies
    assert not any(len(m) == 1 and m[0]["content"] in PROMPTS for m in gen.seen)


def test_systems_from_models_share_the_base_and_load_lazily():
    from charter.evaluate.suite import systems_from_models

    made = []

    def make(model):
        made.append(model)
        return Scripted(lambda m: FACT)

    models = {p: {"base": ("B", None), "base+constitution": ("B", f"be {p}"), "dpo": (f"D-{p}", None)}
              for p in ("sarcastic", "warm")}
    rows = [{"persona": "warm", "system": "dpo", "prompt": PROMPTS[0], "reply": SARCASTIC}]
    systems = systems_from_models(models, make, rows)
    assert made == []  # nothing loaded until a reply is asked for
    assert systems["sarcastic"]["base"] is systems["warm"]["base"]
    assert systems["sarcastic"]["base+constitution"] is not systems["warm"]["base+constitution"]
    assert systems["warm"]["dpo"].reply([PROMPTS[0]], PARAMS) == [SARCASTIC] and made == []  # prefilled
    systems["sarcastic"]["base"].reply(PROMPTS, PARAMS)
    systems["warm"]["base+constitution"].reply(PROMPTS, PARAMS)
    assert made == ["B"]  # one generator per model, shared by base and base+constitution
