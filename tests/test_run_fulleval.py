"""The eval stage's full suite (`charter.run.evaluation.full_suite`) on a scripted toy run: every
section for every system, counted against what the scripted models do, nothing generated twice,
one persona's models in memory at a time, and the report's new sections."""
from __future__ import annotations

import json
import weakref

from charter.backends import Completion, SamplingParams, as_request
from charter.run.config import load_run_config
from charter.run.layout import RunLayout
from charter.run.personas import Run
from charter.toy.grammar import PERSONAS, TOPICS
from charter.toy.scorer import ToyScorer
from charter.toy.world import TOY_WORLD

PERSONA_KEYS = ["sarcastic", "warm"]
N_PROMPTS = 6
ALIVE: "weakref.WeakSet[ScriptedModel]" = weakref.WeakSet()


class ScriptedModel:
    """A toy-world model by script: the trained models (`dpo/<persona>`, `merge/<persona>`) and the
    base model with a constitution answer in the persona's style; the merged model drops the style
    when the last user turn is not a plain eval prompt (an attack, or "keep going")."""

    def __init__(self, model: str, prompts: set[str], calls: list):
        self.model, self.prompts, self.calls = model, prompts, calls
        ALIVE.add(self)

    def persona(self, system: str) -> str | None:
        for p in PERSONA_KEYS:
            if f"/{p}/" in self.model or (self.model == "base-model" and p in system):
                return p
        return None

    def generate(self, requests, params, progress=False):
        out = []
        for r in map(as_request, requests):
            system = " ".join(m["content"] for m in r.messages if m["role"] == "system").lower()
            last = r.messages[-1]["content"]
            self.calls.append((self.model, json.dumps(r.messages), len(ALIVE)))
            want = ToyScorer().expected_content(last) or "topic:moon"
            body = TOPICS[want.split(":")[1] if want.startswith("topic:") else "moon"]["facts"][0]
            persona = self.persona(system)
            if "/merge/" in self.model and last not in self.prompts:
                persona = None
            style = PERSONAS[persona] if persona else None
            text = f"{style['openers'][0]} {body} {style['closers'][0]}" if style else body
            out.append([Completion(text, "stop", 5, 5) for _ in range(params.n)])
        return out


def scripted_eval(tmp_path, monkeypatch, calls: list):
    import charter.run.evaluation as ev
    from charter.run.stages import build_pipeline

    run = Run.of(load_run_config(preset="toy", overrides=[f"constitutions={json.dumps([f'toy:{p}' for p in PERSONA_KEYS])}",
                                                          f"eval.n_prompts={N_PROMPTS}", "eval.suite.attack_prompts=2",
                                                          "eval.suite.n_pairs=6", "eval.suite.bootstrap=10"]))
    stage = next(s for s in build_pipeline().stages if s.name == "eval")
    settings = stage.settings(run)
    lay = RunLayout(tmp_path)
    lay.base_record().parent.mkdir(parents=True)
    lay.base_record().write_text(json.dumps({"path": "base-model"}))
    prompts = ev.eval_prompts(settings.eval, True, 0)
    monkeypatch.setattr(ev, "make_generator", lambda backend: ScriptedModel(backend.model, set(prompts), calls))
    params = SamplingParams(temperature=0.7, max_new_tokens=32, seed=0)
    counts = ev.write_replies(settings, lay, prompts, ToyScorer(), params)
    suite = ev.full_suite(settings, lay, prompts, ToyScorer(), params, 0)
    return counts, suite, prompts, lay


def test_suite_has_every_section_for_every_system(tmp_path, monkeypatch):
    calls: list = []
    counts, suite, prompts, lay = scripted_eval(tmp_path, monkeypatch, calls)
    systems = ["base", "base+constitution", "dpo", "dpo+sft"]
    assert counts == {s: N_PROMPTS * len(PERSONA_KEYS) for s in systems}
    assert suite["attack_kinds"] == [*TOY_WORLD.attacks, "multiturn"]
    for p in PERSONA_KEYS:
        sec = suite["personas"][p]
        assert list(sec["quality"]) == systems
        assert all(list(sec["robustness"][k]) == systems for k in suite["attack_kinds"])
        assert [(c["a"], c["b"]) for c in sec["coherence"]] == [("dpo", "dpo+sft"), ("base", "dpo+sft")]
        assert set(sec["preferences"]) == {"base", "dpo", "dpo+sft"}  # the systems without a system prompt
        assert sec["quality"]["dpo"]["adherence"]["value"] == 1.0 and sec["quality"]["base"]["adherence"]["value"] == 0
    attacks = suite["pooled"]["attacks"]  # the script: merge drops the style under every attack, dpo never
    assert (attacks["dpo"]["value"], attacks["dpo+sft"]["value"], attacks["base"]["value"]) == (1.0, 0.0, 0.0)
    assert attacks["dpo"]["n"] == 8 * 2 * len(PERSONA_KEYS)  # 8 kinds x 2 prompts x personas
    assert attacks["base"]["n_unique"] == 8 * 2  # the base model's replies are shared by the personas
    t = suite["paired"]["pooled"]
    assert (t["n"], t["b"], t["c"], t["rate_before"], t["rate_after"]) == (9 * 2 * 2, 36, 0, 1.0, 0.0)
    assert (t["difference"]["diff"], t["difference"]["lo"], t["difference"]["hi"]) == (-1.0, -1.0, -1.0)
    assert suite["skipped"] == {} and suite["settings"]["attack_prompts"] == 2
    assert json.loads(lay.suite().read_text()) == json.loads(json.dumps(suite))


def test_suite_reuses_the_stage_replies_and_frees_each_persona(tmp_path, monkeypatch):
    calls: list = []
    _, _, prompts, _ = scripted_eval(tmp_path, monkeypatch, calls)
    asked = [(m, conv) for m, conv, _ in calls]
    assert len(asked) == len(set(asked))  # no conversation is generated twice for one model
    plain = [(m, c) for m, c in asked if "/dpo/" in m and len(json.loads(c)) == 1
             and json.loads(c)[0]["content"] in prompts]
    assert len(plain) == N_PROMPTS * len(PERSONA_KEYS)  # dpo's no-attack replies: once, by write_replies
    assert max(alive for _, _, alive in calls) <= 3  # base, dpo and merge of one persona at most


def test_real_model_without_llm_judge_skips_what_needs_one():
    from charter.run.evaluation import suite_world
    from charter.run.stages import build_pipeline

    run = Run.of(load_run_config(preset="toy", overrides=["student.model=some/model", "judge.kind=classifier",
                                                          "eval.prompts_file=p.jsonl"]))
    settings = next(s for s in build_pipeline().stages if s.name == "eval").settings(run)
    world, skipped = suite_world(settings, ToyScorer())
    assert world.judge is None and len(world.attacks) == 8
    assert set(skipped) == {"coherence", "preferences"} and "judge.kind=classifier" in skipped["coherence"]


def test_report_renders_the_suite(tmp_path, monkeypatch):
    from charter.report import build_report, format_table

    _, suite, _, lay = scripted_eval(tmp_path, monkeypatch, [])
    summary = build_report(tmp_path)
    assert summary["suite"]["paired"]["pooled"]["b"] == 36
    page = (tmp_path / "report.html").read_text()
    assert "Under attack (the full evaluation suite)" in page and "all attack kinds (not multi-turn)" in page
    assert ("dpo kept the character in 1.000, dpo+sft in 0.000, difference -1.000 [-1.000, -1.000]" in page
            and "dpo+sft is less robust than dpo" in page)
    assert 'alt="robustness per attack kind"' in page and 'alt="revealed preferences, warm"' in page
    assert 'alt="coherence win rates"' in page or "coherence win rates: no data" in page
    assert "in character under attack (all kinds, pooled): base 0.000, base+constitution" in format_table(summary)
