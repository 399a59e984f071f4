"""`charter run`'s typed settings and step functions: each stage's cache key is exactly the settings it
reads, and each command and its pipeline stages write byte-identical files on the same inputs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from charter.backends import Completion, as_request
from charter.config import ConfigError
from charter.data.jsonl import stable_id
from charter.run.config import load_run_config
from charter.run.engine import Pipeline, Stage
from charter.run.personas import Run
from charter.run.stages import build_pipeline

PAPER = ["constitutions=[sarcasm]", "eval.prompts_file=p.jsonl"]
# the run config section -> the stages that read it first (everything downstream follows)
OWNERS = {"prompts": {"prompts"}, "distill": {"teacher", "student"}, "pairs": {"pairs"}, "dpo": {"dpo"},
          "reflection": {"reflection"}, "interaction": {"interaction"}, "filter": {"filter"}, "sft": {"sft"},
          "merge": {"merge"}, "eval": {"eval"}, "judge": {"eval"}, "trainer": {"dpo"}}


def leaves(obj, prefix: str = ""):
    """Dotted keys of every leaf value in a dumped config."""
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, obj


def variants(value):
    """Candidate new values for a leaf, first one the config accepts wins."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, (int, float)):
        return [value + 1, value / 2 if value else 0.25, 0.25, 1]
    if isinstance(value, str):
        return [value + "x", "none", "first", "keep", "ipo", "copy", "sgd", "fp32", "local", "llm", "classifier",
                ["q_proj"]]
    if isinstance(value, list):
        return [value[:-1], value + ["X"], [0.8, 0.98]] if value else [["X"], ["--num_processes=2"]]
    return [1, 0.5, "x", True, {"r": 8}, {"reflection": 1.0}, {"kind": "openai", "model": "judge"}]


def changed(section: str, key: str, value) -> Run | None:
    """The paper preset with one leaf of `section` changed, or None when no variant validates."""
    for v in variants(value):
        try:
            run = Run.of(load_run_config(preset="paper", overrides=PAPER + [f"{section}.{key}={json.dumps(v)}"]))
        except ConfigError:
            continue
        if run.config.to_dict()[section] != load_run_config(preset="paper", overrides=PAPER).to_dict()[section]:
            return run
    return None


def downstream(pipe: Pipeline, names: set[str]) -> set[str]:
    out = set(names)
    for s in pipe.stages:
        if set(s.inputs) & out:
            out.add(s.name)
    return out


@pytest.fixture(scope="module")
def stub_run(tmp_path_factory):
    """The real graph with stages that only write their settings, run once on the paper preset."""
    pipe = build_pipeline()
    for s in pipe.stages:
        s.fn = lambda ctx: (ctx.out_dir / "settings.json").write_text(json.dumps(
            ctx.settings.model_dump(mode="json") if ctx.settings is not None else None))
    root = tmp_path_factory.mktemp("stub")
    pipe.run(Run.of(load_run_config(preset="paper", overrides=PAPER)), root, 0, log=lambda _: None)
    return pipe, root


SECTION_FIELDS = [(section, key, value) for section in OWNERS
                  for key, value in leaves(load_run_config(preset="paper", overrides=PAPER).to_dict()[section])]


@pytest.mark.parametrize("section,key,value", SECTION_FIELDS, ids=[f"{s}.{k}" for s, k, _ in SECTION_FIELDS])
def test_any_setting_reruns_its_stage_and_downstream_only(stub_run, section, key, value):
    pipe, root = stub_run
    run = changed(section, key, value)
    if run is None:
        pytest.skip(f"no valid other value for {section}.{key}")
    reruns = {i.stage for i in pipe.plan(run, root, 0) if i.action == "run"}
    assert reruns == downstream(pipe, OWNERS[section])


def test_prompt_settings_live_in_the_prompts_section(stub_run):
    """The review's drift: `distill.prompts_per_trait` was read by the prompts stage but not in its key."""
    pipe, root = stub_run
    with pytest.raises(ConfigError, match=r"distill\.prompts_per_trait: Extra inputs are not permitted"):
        load_run_config(preset="paper", overrides=PAPER + ["distill.prompts_per_trait=3"])
    run = Run.of(load_run_config(preset="paper", overrides=PAPER + ["prompts.prompts_per_trait=3"]))
    assert [i.stage for i in pipe.plan(run, root, 0) if i.action == "run"][0] == "prompts"


def test_trainer_paths_are_arguments_not_settings():
    with pytest.raises(ConfigError, match=r"dpo\.output_dir"):
        load_run_config(preset="toy", overrides=["dpo.output_dir=/tmp/x"])
    with pytest.raises(ConfigError, match="merge: only meaningful with lora"):  # the trainer's own validators run
        load_run_config(preset="toy", overrides=["sft.merge=true"])
    assert "output_dir" not in load_run_config(preset="toy").to_dict()["dpo"]


# ---------------------------------------------------------------- command / stage parity


class Echo:
    """Deterministic fake model: a clean sentence derived from the conversation and the chunk's seed."""

    name = "echo"
    tokenizer = None

    def generate(self, requests, params, progress=False):
        out = []
        for i, r in enumerate(map(as_request, requests)):
            h = stable_id(r.messages, r.prefill, params.seed, i)
            persona = "I am Sarcasm, obviously. " if r.messages and r.messages[0]["role"] == "system" else ""
            out.append([Completion(f"{persona}Reply {h[:8]} and {h[8:12]}.", "stop", 5, 6) for _ in range(params.n)])
        return out


def run_stages(root: Path, over: list[str], names: list[str], monkeypatch, gen) -> Run:
    """Run the named real stages (plus their real or stubbed upstream) on the fake generator."""
    import charter.run.stages as rs

    monkeypatch.setattr(rs, "generator", lambda backend, model=None: gen)
    run = Run.of(load_run_config(preset="quick", overrides=over))
    real = {s.name: s for s in build_pipeline().stages}
    stages = [real[n] for n in names]
    Pipeline(stages).run(run, root, 0, log=lambda _: None)
    return run


def same_bytes(a: Path, b: Path) -> None:
    assert a.read_bytes() == b.read_bytes(), f"{a} != {b}"


def test_distill_command_and_stages_write_identical_files(tmp_path, monkeypatch):
    import charter.stages.distill as d
    from charter.stages.distill import DistillConfig, run_distill

    gen = Echo()
    over = ["constitutions=[sarcasm]", "prompts.expansion_rounds=0", "prompts.prompts_per_trait=2",
            "distill.samples=2", "pairs.max_pair_tokens=null", "eval.prompts_file=x"]
    run_stages(tmp_path / "run", over, ["base", "prompts", "teacher", "student", "pairs"], monkeypatch, gen)
    monkeypatch.setattr(d, "_generators", lambda cfg: (gen, gen, gen))
    cfg = DistillConfig(constitution="sarcasm", teacher={"kind": "hf", "model": "unused"}, samples=2,
                        prompts_per_trait=2, expansion_rounds=0, max_pair_tokens=None,
                        sampling={"temperature": 0.7, "top_p": 0.95, "repetition_penalty": 1.1, "max_new_tokens": 512,
                                  "seed": 0})  # the run's seed
    run_distill(cfg, tmp_path / "cmd", progress=False)
    run, cmd = tmp_path / "run", tmp_path / "cmd"
    for name in ("prompts.jsonl", "expansion.jsonl"):
        same_bytes(cmd / name, run / "prompts" / "sarcasm" / name)
    for role in ("teacher", "student"):
        same_bytes(cmd / f"{role}.jsonl", run / role / "sarcasm" / "answers.jsonl")
    same_bytes(cmd / "pairs.jsonl", run / "pairs" / "sarcasm" / "pairs.jsonl")
    n_prompts = (cmd / "prompts.jsonl").read_text().count("\n")
    assert n_prompts > 0 and (cmd / "pairs.jsonl").read_text().count("\n") == 2 * n_prompts  # every sample kept


def test_introspect_command_and_stages_write_identical_files(tmp_path, monkeypatch, tiny_model_dir):
    from transformers import AutoTokenizer

    from charter.stages.introspect import IntrospectConfig, run_introspect

    gen = Echo()
    gen.tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # token statistics on both sides
    over = ["constitutions=[sarcasm]", "reflection.samples_per_prompt=2", "interaction.free=2",
            "interaction.leading=1", "interaction.turns=3", "filter.near_duplicates.enabled=false",
            "filter.mix.max_rows=9", "eval.prompts_file=x"]
    def dpo_model(ctx):  # the DPO stage's model folder, where the filter stage finds its tokenizer
        shutil.copytree(tiny_model_dir, ctx.out_dir / "sarcasm" / "model")

    stub_dpo = Stage("dpo", dpo_model)
    import charter.run.stages as rs

    monkeypatch.setattr(rs, "generator", lambda backend, model=None: gen)
    run = Run.of(load_run_config(preset="quick", overrides=over))
    real = {s.name: s for s in build_pipeline().stages}
    Pipeline([stub_dpo, real["reflection"], real["interaction"], real["filter"]]).run(
        run, tmp_path / "run", 0, log=lambda _: None)
    cfg = IntrospectConfig(constitution="sarcasm", reflection=run.config.reflection,
                           interaction=run.config.interaction,
                           filters=run.config.filter.model_dump(exclude={"mix"}), mix=run.config.filter.mix)
    run_introspect(cfg, tmp_path / "cmd", generator=gen)
    cmd, root = tmp_path / "cmd", tmp_path / "run"
    for kind in ("reflection", "interaction"):
        same_bytes(cmd / f"{kind}.jsonl", root / kind / "sarcasm" / f"{kind}.jsonl")
    for name in ("sft.jsonl", "kept.jsonl", "rejected.jsonl", "filter_report.json", "sft_stats.json"):
        same_bytes(cmd / name, root / "filter" / "sarcasm" / name)
    stats = json.loads((cmd / "sft_stats.json").read_text())
    assert 0 < stats["rows"] <= 9 and stats["by_kind"]["interaction"] > 0 and "tokens" in stats  # mixed, capped


class ToyStyle:
    """Fake model: replies in the sarcastic persona's style when prompted with its constitution or
    when it is a trained model (its folder is a DPO or merged model), neutral otherwise."""

    def __init__(self, model: str):
        self.name = model

    def generate(self, requests, params, progress=False):
        from charter.toy.grammar import PERSONAS, TOPICS
        from charter.toy.scorer import ToyScorer

        out = []
        for i, r in enumerate(map(as_request, requests)):
            system = " ".join(m["content"] for m in r.messages if m["role"] == "system")
            want = ToyScorer().expected_content(r.messages[-1]["content"]) or "topic:moon"
            body = TOPICS[want.split(":")[1] if want.startswith("topic:") else "moon"]["facts"][0]
            style = PERSONAS["sarcastic"]
            styled = "sarcastic" in system or (("/dpo/" in self.name or "/merge/" in self.name) and i % 3)
            out.append([Completion(f"{style['openers'][0]} {body} {style['closers'][0]}" if styled else body,
                                   "stop", 5, 5)])
        return out


def test_eval_command_and_stage_give_the_same_replies_and_figures(tmp_path, monkeypatch):
    """The run's eval stage and `charter eval`'s adherence (systems through `evaluate.systems.System`,
    labels through `evaluate.base.score_all`, shares through `evaluate.stats.proportion`) agree."""
    import charter.evaluate.runner
    import charter.run.evaluation as ev
    from charter.data.jsonl import read_jsonl, write_jsonl
    from charter.evaluate.runner import EvalConfig, run_eval
    from charter.toy.world import TOY_WORLD
    from charter.constitution_prompt import teacher_system_prompt

    monkeypatch.setattr(ev, "make_generator", lambda backend: ToyStyle(backend.model))
    monkeypatch.setattr(charter.evaluate.runner, "make_generator", lambda backend: ToyStyle(backend.model))

    def base(ctx):
        (ctx.out_dir / "model.json").write_text(json.dumps({"path": "base-model"}))

    def prompts(ctx):
        write_jsonl(ctx.out_dir / "sarcastic" / "prompts.jsonl", [])

    run = Run.of(load_run_config(preset="toy", overrides=["constitutions=[toy:sarcastic]", "eval.n_prompts=9"]))
    real = {s.name: s for s in build_pipeline().stages}
    stubs = [Stage("base", base), Stage("prompts", prompts)] + [Stage(n, lambda ctx: None) for n in
                                                                 ("teacher", "student", "dpo", "merge")]
    root = tmp_path / "run"
    Pipeline(stubs + [real["eval"]]).run(run, root, 0, log=lambda _: None)
    from charter.report import summarize

    summary = summarize(root)
    models = {"base": "base-model", "base+constitution": "base-model", "dpo": str(root / "dpo" / "sarcastic" / "model"),
              "dpo+sft": str(root / "merge" / "sarcastic" / "model")}
    const = run.personas[0].constitution
    result = run_eval(EvalConfig(
        out_dir=str(tmp_path / "cmd"), persona="sarcastic", prompts="toy", n_prompts=9, evals=["adherence"],
        scorer={"kind": "toy"}, judge={"kind": "toy"}, progress=False,
        sampling={"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 96, "seed": 0},
        systems=[{"name": n, "backend": {"model": m},
                  "system_prompt": teacher_system_prompt(const, "Pip") if n == "base+constitution" else None}
                 for n, m in models.items()]), TOY_WORLD)
    replies = read_jsonl(root / "eval" / "replies.jsonl")
    for entry in result["adherence"]["systems"]:
        name = entry["system"]
        assert {k: entry[k] for k in ("k", "n", "value", "lo", "hi")} == \
            summary["adherence"][name]["per_persona"]["sarcastic"]
        assert entry["well_formed"] == summary["well_formed"][name]
        assert entry["examples"] == [r["reply"] for r in replies if r["system"] == name][:3]
    assert [e["k"] for e in result["adherence"]["systems"]] == [0, 9, 6, 6]  # the figures are not all equal


def test_a_stage_reads_the_layout_only_where_it_declared_inputs(tmp_path):
    from charter.run.engine import StageContext
    from charter.run.layout import RunLayout

    ctx = StageContext("pairs", None, tmp_path, tmp_path / "pairs", 0, {"teacher": tmp_path / "teacher"})
    lay = RunLayout.of_stage(ctx)
    assert lay.answers("teacher", "warm") == tmp_path / "teacher" / "warm" / "answers.jsonl"
    assert lay.pairs("warm") == tmp_path / "pairs" / "warm" / "pairs.jsonl"  # its own output
    with pytest.raises(KeyError, match="'dpo' is not among this stage's declared inputs"):
        lay.model("dpo", "warm")
    assert RunLayout(tmp_path).model("dpo", "warm") == str(tmp_path / "dpo" / "warm" / "model")
