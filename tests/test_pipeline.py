"""The stage graph: caching, invalidation, --from/--only, interrupted-stage resume, and dry runs."""
from __future__ import annotations

import json

import pytest

from charter.config import Config, ConfigError
from charter.data.jsonl import RecordStore, read_jsonl
from charter.run.engine import Pipeline, Stage, load_manifest


class Sec(Config):
    n: int = 3
    tag: str = "x"


class Cfg(Config):
    a: Sec = Sec()
    b: Sec = Sec()
    c: Sec = Sec()


def make_pipeline(calls: list[str], fail_at: dict | None = None) -> Pipeline:
    """a -> b -> c, each a resumable record writer; `fail_at` = {stage: record index} simulates a kill."""

    def writer(name: str, upstream: str | None):
        def fn(ctx):
            calls.append(name)
            sec = ctx.settings
            base = [r["v"] for r in read_jsonl(ctx.input_dir(upstream) / "out.jsonl")] if upstream else [0]
            with RecordStore(ctx.out_dir / "out.jsonl") as store:
                for i in range(sec.n):
                    if fail_at and fail_at.get(name) == i:
                        raise KeyboardInterrupt  # killed mid-stage
                    rid = f"{i}"
                    if rid not in store:
                        calls.append(f"{name}.write{i}")
                        store.add({"id": rid, "v": sum(base) + i, "tag": sec.tag})
            return {"records": sec.n}
        return fn

    return Pipeline([
        Stage("a", writer("a", None), [], lambda c: c.a),
        Stage("b", writer("b", "a"), ["a"], lambda c: c.b),
        Stage("c", writer("c", "b"), ["b"], lambda c: c.c),  # each stage reads only its own section
    ])


def test_first_run_then_everything_cached(tmp_path):
    calls: list[str] = []
    p = make_pipeline(calls)
    m = p.run(Cfg(), tmp_path, seed=0, log=lambda _: None)
    assert [c for c in calls if "." not in c] == ["a", "b", "c"]
    assert m["stages"]["c"]["counts"] == {"records": 3}
    assert all(m["stages"][s]["status"] == "done" for s in "abc")
    assert {"torch", "python"} <= set(m["versions"]) and m["seed"] == 0 and m["config_hash"]
    calls.clear()
    p.run(Cfg(), tmp_path, seed=0, log=lambda _: None)
    assert calls == []
    assert [i.action for i in p.plan(Cfg(), tmp_path, 0)] == ["cached"] * 3


def test_config_change_reruns_that_stage_and_downstream_only(tmp_path):
    calls: list[str] = []
    p = make_pipeline(calls)
    p.run(Cfg(), tmp_path, seed=0, log=lambda _: None)
    cfg = Cfg(b=Sec(n=4))
    plan = {i.stage: i for i in p.plan(cfg, tmp_path, 0)}
    assert plan["a"].action == "cached"
    assert plan["b"].action == "run" and "config changed" in plan["b"].reason
    assert plan["c"].action == "run" and "upstream b" in plan["c"].reason
    calls.clear()
    m = p.run(cfg, tmp_path, seed=0, log=lambda _: None)
    assert [c for c in calls if "." not in c] == ["b", "c"]
    assert len(read_jsonl(tmp_path / "b" / "out.jsonl")) == 4
    # a = [0,1,2]; b = 3 + [0..3] = [3,4,5,6] (sum 18); c = 18 + [0,1,2]
    assert [r["v"] for r in read_jsonl(tmp_path / "c" / "out.jsonl")] == [18, 19, 20]
    assert m["stages"]["b"]["counts"] == {"records": 4}


def test_rerun_with_identical_output_keeps_downstream_cached(tmp_path):
    """A config change that does not change a stage's output does not invalidate what follows."""
    calls: list[str] = []
    p = make_pipeline(calls)
    p.run(Cfg(), tmp_path, seed=0, log=lambda _: None)
    calls.clear()
    p.run(Cfg(), tmp_path, seed=0, start="b", log=lambda _: None)  # forced, same output
    assert [c for c in calls if "." not in c] == ["b"]


def test_seed_change_invalidates_all(tmp_path):
    calls: list[str] = []
    p = make_pipeline(calls)
    p.run(Cfg(), tmp_path, seed=0, log=lambda _: None)
    assert [i.action for i in p.plan(Cfg(), tmp_path, 1)] == ["run"] * 3


def test_only_and_from(tmp_path):
    calls: list[str] = []
    p = make_pipeline(calls)
    with pytest.raises(ConfigError, match="inputs"):
        p.plan(Cfg(), tmp_path, 0, only="b")
    with pytest.raises(ConfigError, match="unknown stage"):
        p.plan(Cfg(), tmp_path, 0, start="nope")
    p.run(Cfg(), tmp_path, seed=0, log=lambda _: None)
    calls.clear()
    p.run(Cfg(c=Sec(tag="y")), tmp_path, seed=0, only="a", log=lambda _: None)
    assert [c for c in calls if "." not in c] == ["a"]  # c's change waits: --only runs one stage
    assert [i.action for i in p.plan(Cfg(c=Sec(tag="y")), tmp_path, 0)] == ["cached", "cached", "run"]


def test_interrupted_stage_resumes_and_equals_uninterrupted(tmp_path):
    calls: list[str] = []
    p = make_pipeline(calls, fail_at={"b": 2})
    with pytest.raises(KeyboardInterrupt):
        p.run(Cfg(), tmp_path / "r", seed=0, log=lambda _: None)
    m = load_manifest(tmp_path / "r")
    assert m["stages"]["a"]["status"] == "done" and m["stages"]["b"]["status"] == "running"
    plan = {i.stage: i.action for i in p.plan(Cfg(), tmp_path / "r", 0)}
    assert plan == {"a": "cached", "b": "resume", "c": "run"}
    calls.clear()
    p2 = make_pipeline(calls)
    p2.run(Cfg(), tmp_path / "r", seed=0, log=lambda _: None)
    assert calls == ["b", "b.write2", "c", "c.write0", "c.write1", "c.write2"]  # b's 0,1 were kept
    make_pipeline([]).run(Cfg(), tmp_path / "u", seed=0, log=lambda _: None)
    for s in "abc":
        assert (tmp_path / "r" / s / "out.jsonl").read_text() == (tmp_path / "u" / s / "out.jsonl").read_text()
    assert load_manifest(tmp_path / "r")["stages"]["c"]["output_hash"] == \
        load_manifest(tmp_path / "u")["stages"]["c"]["output_hash"]


def test_changed_key_starts_interrupted_stage_afresh(tmp_path):
    """Partial records written under another config are never resumed into the new one."""
    p = make_pipeline([], fail_at={"b": 2})
    with pytest.raises(KeyboardInterrupt):
        p.run(Cfg(), tmp_path, seed=0, log=lambda _: None)
    make_pipeline([]).run(Cfg(b=Sec(tag="new")), tmp_path, seed=0, log=lambda _: None)
    assert {r["tag"] for r in read_jsonl(tmp_path / "b" / "out.jsonl")} == {"new"}


def test_modified_output_is_rebuilt(tmp_path):
    calls: list[str] = []
    p = make_pipeline(calls)
    p.run(Cfg(), tmp_path, seed=0, log=lambda _: None)
    (tmp_path / "b" / "out.jsonl").write_text(json.dumps({"id": "0", "v": 99}) + "\n")
    plan = {i.stage: i for i in p.plan(Cfg(), tmp_path, 0)}
    assert plan["b"].action == "run" and "modified" in plan["b"].reason


def test_graph_rejects_inputs_out_of_order():
    with pytest.raises(ValueError, match="do not come before"):
        Pipeline([Stage("b", lambda c: None, ["a"]), Stage("a", lambda c: None)])


# ---------------------------------------------------------------- the real graph and CLI

def _real_graph_with_stub_fns():
    """The real stage names, inputs and settings, with each stage writing its settings to a marker file."""
    from charter.run.stages import build_pipeline

    pipe = build_pipeline()
    ran: list[str] = []
    for s in pipe.stages:
        def fn(ctx, name=s.name):
            ran.append(name)
            settings = ctx.settings.model_dump(mode="json") if ctx.settings is not None else None
            (ctx.out_dir / "out.txt").write_text(name + json.dumps(settings, sort_keys=True))
        s.fn = fn
    return pipe, ran


def _run(*over: str, preset: str | None = None):
    from charter.run.config import load_run_config
    from charter.run.personas import Run

    return Run.of(load_run_config(preset=preset, overrides=list(over)))


def test_real_graph_invalidation(tmp_path):
    over = ["constitutions=[sarcasm]", "eval.prompts_file=p.jsonl"]
    run = _run(*over, preset="paper")
    pipe, ran = _real_graph_with_stub_fns()
    pipe.run(run, tmp_path, 0, log=lambda _: None)
    assert ran == pipe.names()
    actions = {i.stage: i.action for i in pipe.plan(_run(*over, "dpo.beta=0.2", preset="paper"), tmp_path, 0)}
    upstream = ["base", "prompts", "teacher", "student", "pairs"]
    assert all(actions[s] == "cached" for s in upstream)
    assert all(actions[s] == "run" for s in pipe.names() if s not in upstream)
    actions = {i.stage: i.action for i in pipe.plan(_run(*over, "eval.n_prompts=7", preset="paper"), tmp_path, 0)}
    assert [s for s, a in actions.items() if a == "run"] == ["eval", "report"]


def test_real_graph_toy_sections(tmp_path):
    """Toy knobs land in the right stage: prompt counts re-run prompts (not the model build)."""
    run = _run()  # no config, no preset: the toy preset
    assert run.config.is_toy and run.config.name == "toy"
    pipe, _ = _real_graph_with_stub_fns()
    pipe.run(run, tmp_path, 0, log=lambda _: None)

    def reruns(*over: str) -> list[str]:
        return [i.stage for i in pipe.plan(_run(*over), tmp_path, 0) if i.action == "run"]

    assert reruns("toy.prompts_per_persona=7")[0] == "prompts"
    assert reruns("toy.build.steps=10")[0] == "base"
    assert reruns("merge.sft_weight=0.5") == ["merge", "eval", "report"]
    assert reruns("eval.suite.attack_prompts=5") == reruns("eval.suite.n_pairs=7") == ["eval", "report"]
    assert reruns("constitutions=[toy:warm]")[:2] == ["prompts", "teacher"]


def test_dry_run_paper_preset_needs_no_model(tmp_path, tiny_model_dir, monkeypatch):
    """The plan is printed after the student's config and tokenizer resolve (no weights, no
    generator; a served teacher is not contacted); nothing is written."""
    import charter.backends

    from typer.testing import CliRunner

    from charter.cli import app

    def boom(*a, **k):
        raise AssertionError("dry run must not build a generator")

    monkeypatch.setattr(charter.backends, "make_generator", boom)
    run_dir = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--preset", "paper", f"student.model={tiny_model_dir}",
                                   "teacher.base_url=http://127.0.0.1:9/v1", "--run-dir", str(run_dir),
                                   "--dry-run"])
    assert res.exit_code == 0, res.output
    assert str(tiny_model_dir) in res.output
    for stage in ("prompts", "teacher", "student", "pairs", "dpo", "reflection", "interaction", "filter",
                  "sft", "merge", "eval", "report"):
        assert f"  {stage} " in res.output
    assert not run_dir.exists()


def test_bad_override_names_the_field(tmp_path):
    from charter.run.config import load_run_config

    with pytest.raises(ConfigError, match="merge.dpo_weight"):
        load_run_config(preset="paper", overrides=["merge.dpo_weight=lots"])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_run_config(preset="nope")


def test_chat_resolves_stage_models(tmp_path):
    from charter.commands.chat import resolve_model

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "model.json").write_text(json.dumps({"path": "/m/base"}))
    for stage in ("dpo", "sft"):
        for p in ("warm", "poetic"):
            (tmp_path / stage / p).mkdir(parents=True)
            (tmp_path / stage / p / "done.json").write_text("{}")
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {
        "base": {"status": "done"}, "dpo": {"status": "done"}, "sft": {"status": "done"},
        "merge": {"status": "running"}}}))
    assert resolve_model(str(tmp_path)) == str(tmp_path / "sft" / "poetic" / "model")  # latest finished, first persona
    assert resolve_model(str(tmp_path), "dpo", "warm") == str(tmp_path / "dpo" / "warm" / "model")
    assert resolve_model(str(tmp_path), "base") == "/m/base"
    with pytest.raises(ConfigError, match="merge"):
        resolve_model(str(tmp_path), "merge")
    assert resolve_model("org/model") == "org/model"


def test_chat_streams_and_keeps_history(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charter.commands.chat import chat_loop, respond

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    chunks: list[str] = []
    reply = respond(model, tok, [{"role": "user", "content": "hello"}], chunks.append, 8, temperature=0)
    assert chunks and "".join(chunks).strip() == reply
    lines = iter(["hi", "/reset", "again", "/exit"])
    msgs = chat_loop(lambda m, w: respond(model, tok, m, w, 4, 0), "be kind",
                     read=lambda: next(lines), write=lambda s: None)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"] and msgs[1]["content"] == "again"


def test_merge_of_full_fine_tunes_is_exact_sum_of_deltas(tmp_path):
    """Full fine-tunes merge as base + w_dpo (dpo - base) + w_sft (sft - dpo), tensor by tensor."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from charter.train.stage_merge import merge_stages
    from charter.tiny import build_tiny_model_dir

    base = build_tiny_model_dir(tmp_path / "base")
    w = load_file(str(base / "model.safetensors"))
    dirs = {}
    for name, shift in (("dpo", 0.5), ("sft", 2.0)):
        d = tmp_path / name
        shutil.copytree(base, d)
        save_file({k: v + shift for k, v in w.items()}, str(d / "model.safetensors"), metadata={"format": "pt"})
        dirs[name] = d
    merge_stages(base, [(dirs["dpo"], 1.0), (dirs["sft"], 0.25)], tmp_path / "out")
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    for k, v in w.items():  # base + 0.5 + 0.25 * 1.5
        assert torch.allclose(out[k], v + 0.875, atol=1e-6)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # a loadable HF folder


# ---------------------------------------------------------------- real stages, end to end

class FakeToyGenerator:
    """Answers like the toy world: persona style when the system prompt carries the sarcastic
    constitution, neutral otherwise. Generation is faked so the test is fast; everything else
    (prompts, pairs, filters, DPO, SFT, merge, eval, report) is the real code on a tiny model."""

    name = "fake-toy"

    def generate(self, requests, params, progress=False):
        from charter.backends import Completion, as_request
        from charter.toy.grammar import PERSONAS, TOPICS
        from charter.toy.scorer import ToyScorer

        scorer, out = ToyScorer(), []
        for r in map(as_request, requests):
            msgs = r.messages or [{"role": "user", "content": r.prompt}]
            system = " ".join(m["content"] for m in msgs if m["role"] == "system")
            want = scorer.expected_content(msgs[-1]["content"]) or "topic:moon"
            topic = want.split(":")[1] if want.startswith("topic:") else "moon"
            body = TOPICS[topic]["facts"][0]
            style = PERSONAS["sarcastic"]
            text = f"{style['openers'][0]} {body} {style['closers'][0]}" if "sarcastic" in system else body
            out.append([Completion(text, "stop", 5, 5) for _ in range(params.n)])
        return out


@pytest.mark.slow
def test_real_stages_end_to_end_cached_and_resumed(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import charter.run.evaluation as ev
    import charter.run.stages as rs

    monkeypatch.setattr(rs, "generator", lambda backend, model=None: FakeToyGenerator())
    monkeypatch.setattr(ev, "make_generator", lambda backend: FakeToyGenerator())
    over = [f"student.model={tiny_model_dir}", "judge.kind=toy", "constitutions=[toy:sarcastic]",
            "assistant_name=Pip", "eval.prompts_file=toy", "eval.n_prompts=6", "teacher=null",
            "prompts.prompts_per_trait=2", "pairs.max_pair_tokens=null", "distill.samples=1",
            "reflection.samples_per_prompt=1", "interaction.free=1", "interaction.leading=1",
            "interaction.turns=2", "dpo.epochs=1", "sft.epochs=1", "dpo.batch_size=4", "sft.batch_size=4",
            "trainer.launcher=local"]
    cfg = _run(*over, preset="quick")
    rs.preflight(cfg)
    pipe = rs.build_pipeline()
    m = pipe.run(cfg, tmp_path / "run", 0, log=lambda _: None)
    assert all(v["status"] == "done" for v in m["stages"].values())
    assert m["stages"]["pairs"]["counts"]["sarcastic"]["pairs"] > 0
    pair = read_jsonl(tmp_path / "run" / "pairs" / "sarcastic" / "pairs.jsonl")[0]  # `charter distill`'s provenance
    prompts = {p["id"]: p for p in read_jsonl(tmp_path / "run" / "prompts" / "sarcastic" / "prompts.jsonl")}
    assert pair["meta"]["source"] == prompts[pair["meta"]["prompt_id"]]["source"] == "constitution"
    assert pair["meta"]["think"] is False and pair["meta"]["student_name"] == "Pip"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["systems"] == ["base", "base+constitution", "dpo", "dpo+sft"]
    assert summary["adherence"]["base+constitution"]["mean"] == 1.0  # the fake teacher is always in style
    assert summary["adherence"]["base"]["mean"] == 0.0
    assert (tmp_path / "run" / "report.html").exists()
    from huggingface_hub import ModelCard  # the shipped model's card carries the run's figures

    model = tmp_path / "run" / "merge" / "sarcastic" / "model"
    card = ModelCard.load(model / "README.md")
    rate = summary["adherence"]["dpo+sft"]["per_persona"]["sarcastic"]["value"]
    assert card.data.eval_results[0].metric_value == rate and "## Evaluation" in card.text
    # everything cached on a second run (rewriting the card does not change the merge stage's output)
    assert {i.action for i in pipe.plan(cfg, tmp_path / "run", 0)} == {"cached"}
    # an interrupted eval resumes and gives the same summary
    before = (tmp_path / "run" / "summary.json").read_text()
    man = load_manifest(tmp_path / "run")
    man["stages"]["eval"]["status"] = "running"
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(man))
    lines = (tmp_path / "run" / "eval" / "replies.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "run" / "eval" / "replies.jsonl").write_text("".join(lines[:5]) + lines[5][:10])  # torn
    assert {i.stage: i.action for i in pipe.plan(cfg, tmp_path / "run", 0)}["eval"] == "resume"
    pipe.run(cfg, tmp_path / "run", 0, log=lambda _: None)
    assert (tmp_path / "run" / "summary.json").read_text() == before
    assert json.loads(before)["heldout"]["overlap"] == 0
    # an eval prompts file that repeats two training prompts is measured and warned about
    leaked = tmp_path / "leaked.txt"
    leaked.write_text("\n".join([p["prompt"].upper() for p in list(prompts.values())[:2]] + ["Is this new?"]))
    cfg = _run(*over, f"eval.prompts_file={leaked}", preset="quick")
    pipe.run(cfg, tmp_path / "run", 0, log=lambda _: None)
    heldout = json.loads((tmp_path / "run" / "summary.json").read_text())["heldout"]
    assert (heldout["overlap"], heldout["eval_distinct"]) == (2, 3)
    assert "2 of 3 distinct eval prompts are also training prompts" in capsys.readouterr().err


def test_chat_constitutional_shows_each_step(tiny_model_dir):
    """`charter chat MODEL --constitutional --show-steps` runs draft -> critique -> revise each turn."""
    from typer.testing import CliRunner

    from charter.cli import app

    res = CliRunner().invoke(app, ["chat", str(tiny_model_dir), "--constitutional", "--show-steps",
                                   "--max-new-tokens", "4", "--temperature", "0"], input="hello\n/exit\n")
    assert res.exit_code == 0, res.output
    out = res.output
    assert out.index("[draft") < out.index("[critique") < out.index("[revision") < out.index("[final]")
