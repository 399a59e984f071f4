"""Bootstrapping: the template guard, and verifiable checks on positive and negative examples."""
import json

import pytest

from charter.backends.base import Completion
from charter.cai.bootstrap import (BootstrapConfig, Frame, TemplateLeakError, assert_no_template, choose, complete,
                                   draw_tasks, framed, sort_samples, stage_data, summary_table)
from charter.cai.verifiable import FAMILIES, Check, check_response, make_tasks, sentence_count
from charter.chat import render_prompt
from charter.data.jsonl import read_jsonl
from charter.tiny import build_tokenizer


@pytest.fixture(scope="module")
def chat_tok():
    return build_tokenizer()  # ChatML template, <|im_start|>/<|im_end|> specials


@pytest.fixture(scope="module")
def base_tok():
    return build_tokenizer(chat_template=None, eos_token="<|endoftext|>")


def test_guard_fires_when_chat_template_leaks(chat_tok):
    leaked = render_prompt(chat_tok, [{"role": "user", "content": "Write three words."}])
    with pytest.raises(TemplateLeakError, match="im_start"):
        assert_no_template(leaked, chat_tok)
    # the same instruction framed for a base model passes
    text, stops = framed("fewshot", "Write three words.", Frame(), [("Say hi.", "hi")])
    assert_no_template(text, chat_tok)
    assert text.endswith("Instruction: Write three words.\nResponse:") and "END" in stops


def test_guard_catches_template_scaffolding_without_special_tokens():
    # a template made of plain words: its scaffolding is still refused
    tok = build_tokenizer(chat_template="{% for m in messages %}### {{ m['role'] }} said:\n{{ m['content'] }}\n"
                                        "{% endfor %}")
    with pytest.raises(TemplateLeakError, match="### user said:"):
        assert_no_template("### user said:\nhello", tok)
    assert_no_template("Instruction: hello\nResponse:", tok)


def test_guard_fires_on_special_tokens_in_base_tokenizer(base_tok):
    with pytest.raises(TemplateLeakError):
        assert_no_template("hello<|endoftext|>Instruction: x", base_tok)


def test_complete_refuses_before_generating(chat_tok):
    class Recorder:
        name = "rec"
        calls = 0

        def generate(self, requests, params, progress=False):
            Recorder.calls += 1
            return [[Completion("x", "stop")] for _ in requests]

    leaked = render_prompt(chat_tok, [{"role": "user", "content": "hi"}])
    with pytest.raises(TemplateLeakError):
        complete(Recorder(), chat_tok, [("Instruction: a\nResponse:", ["END"]), (leaked, [])],
                 BootstrapConfig().sampling)
    assert Recorder.calls == 0


@pytest.mark.parametrize("check, good, bad", [
    (Check("word_count", (3, 3)), "the sea is", "the sea is blue"),
    (Check("sentence_count", (2, 2)), "It rains. The sea is warm!", "It rains."),
    (Check("include", "warm"), "The tea is warm.", "The tea is warmer."),  # whole words only
    (Check("exclude", "cat"), "The dog sleeps.", "A Cat sleeps."),  # case-insensitive
    (Check("json_key", ("sea", "blue")), '{"sea": "blue"}', '{"sea": "red"}'),
    (Check("json_key", ("sea", "blue")), ' {"sea": "blue", "x": 1} ', '["sea", "blue"]'),
    (Check("bullets", 2), "- warm\n- kind", "- warm\n- kind\n- old"),
    (Check("bullets", 2), "* a\n* b", "- a\nand b"),
    (Check("starts_with", "The moon"), "the moon is bright.", "A moon is bright."),
    (Check("ends_with", "river"), "I walk to the river.", "The river is long."),
    (Check("uppercase"), "CAT", "Cat"),
    (Check("lowercase"), "the cat is old.", "The cat is old."),
    (Check("answer", "5"), "5.", "The answer is 5."),
])
def test_verifiable_checks(check, good, bad):
    assert check(good) and not check(bad)


def test_compare_pairs_outcomes_and_splits_families():
    from charter.cai.bootstrap import compare

    fig = compare([True, False, False, True], [True, True, True, False], ["a", "a", "b", "b"])
    assert (fig["k"], fig["n"]) == (3, 4) and fig["by_family"] == {"a": 1.0, "b": 0.5}
    assert (fig["mcnemar"]["b"], fig["mcnemar"]["c"]) == (1, 2)
    assert fig["ci"][0] < 0.75 < fig["ci"][1]


def test_sentence_count_edges():
    assert sentence_count("") == 0 and sentence_count("no end") == 1 and sentence_count("A. B? C!") == 3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_task_references_pass_and_empty_fails(family):
    tasks = make_tasks(family, 30, seed=3)
    assert len({t.id for t in tasks}) == 30
    assert all(check_response(t, t.reference)[0] for t in tasks)
    assert not any(check_response(t, "")[0] for t in tasks)
    assert [t.instruction for t in tasks] == [t.instruction for t in make_tasks(family, 30, seed=3)]


def test_evaluation_tasks_have_both_verdicts_and_they_are_right():
    tasks = make_tasks("evaluation", 40, seed=0)
    verdicts = {t.reference for t in tasks}
    assert verdicts == {"yes", "no"}
    for t in tasks:
        inner = t.meta["inner"]
        resp = t.instruction.split("\nReply: ")[1].split("\nDoes the reply")[0]
        checks = [Check(c["kind"], tuple(c["arg"]) if isinstance(c["arg"], list) else c["arg"]) for c in inner["checks"]]
        assert all(c(resp) for c in checks) == (t.reference == "yes")


def test_stage_data_sorts_samples_by_checks(base_tok):
    class Echo:
        """Answers the uppercase task right on the first sample, wrong on the second."""

        name = "echo"

        def generate(self, requests, params, progress=False):
            out = []
            for r in requests:
                word = r.prompt.rsplit("Write the word ", 1)[-1].split(" ")[0]
                out.append([Completion(word.upper(), "stop"), Completion(word, "stop")][:params.n])
            return out

    cfg = BootstrapConfig(train_tasks=20, samples=2, fewshot=1)
    sft, pairs, stats = stage_data(Echo(), base_tok, "instructions", cfg, stage_seed=1)
    tasks = make_tasks("instructions", 20, seed=1)
    n_upper = sum(t.kind == "uppercase" for t in tasks)
    assert stats["tasks_solved"] == n_upper and stats["references_used"] == 20 - n_upper
    assert len(sft) == 20 and all(json.dumps(r) for r in sft)
    assert all(check_response(t, r["messages"][-1]["content"])[0] for t, r in zip(tasks, sft))
    assert len(pairs) == 20  # the second sample always fails: every task gives a pair
    md = summary_table([{"stage": "instructions", "framing": "hh", "accuracy": 0.5, "ci": [0.3, 0.7], "k": 5,
                         "n": 10, "mcnemar": {"b": 1, "c": 4, "p_exact": 0.375}, "data": stats}])
    assert "| instructions | hh | 0.500 (5/10) | [0.300, 0.700] | - | 1/4, p=0.375 |" in md


def test_finished_stages_are_not_rerun(tmp_path, monkeypatch):
    """Resume: stages with done.json load their results; nothing is generated or trained."""
    import charter.cai.bootstrap as bs

    monkeypatch.setattr(bs, "_load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    cfg = BootstrapConfig(out_dir=str(tmp_path), base_model="base", stages=["instructions"], eval_tasks=2,
                          eval_families=["questions"])
    base = [True, False]
    after = [True, True]
    stats = {"tasks": 1, "tasks_solved": 1, "references_used": 0, "pairs": 0}
    (tmp_path / "stage_0_baseline").mkdir()
    (tmp_path / "stage_0_baseline" / "eval.json").write_text(json.dumps({"results": {"hh": base}}))
    (tmp_path / "stage_0_baseline" / "done.json").write_text("{}")
    s1 = tmp_path / "stage_1_instructions"
    s1.mkdir()
    fams = ["questions", "questions"]
    (s1 / "eval.json").write_text(json.dumps({"results": {"hh": after}, "data": stats,
                                              "figures": {"hh": bs.compare(base, after, fams)}}))
    (s1 / "done.json").write_text(json.dumps({"model": "stage1-model"}))
    summary = bs.run_bootstrap(cfg)
    assert summary["final_model"] == "stage1-model"
    assert [(r["stage"], r["k"]) for r in summary["rows"]] == [("baseline", 1), ("instructions", 2)]
    assert summary["rows"][1]["mcnemar"]["c"] == 1
    assert "| instructions | hh | 1.000 (2/2)" in (tmp_path / "summary.md").read_text()


# ------------------------------------------------------------------ rejection-sampled self data


def _task(kind="uppercase"):
    return next(t for t in make_tasks("instructions", 200, seed=4) if t.kind == kind)


def test_sort_samples_splits_by_checks_and_drops_empty_and_repeats():
    t = _task()  # "Write the word X in capital letters only."
    word = t.reference
    good, bad = sort_samples(t, [word, "", word.lower(), word, f"{word} {word} {word} {word}", word.lower()])
    assert good == [word] and bad == [word.lower(), f"{word} {word} {word} {word}"]


@pytest.mark.parametrize("source, good, rows, pairs", [
    ("self", ["A", "B"], [("A", "self"), ("B", "self")], [("A", "x", "self"), ("B", "y", "self")]),
    ("self", ["A"], [("A", "self")], [("A", "x", "self"), ("A", "y", "self")]),  # one passing pairs twice
    ("self", [], [], []),  # nothing passed: the task gives no data at all
    ("self+reference", [], [("REF", "reference")], [("REF", "x", "reference"), ("REF", "y", "reference")]),
    ("self+reference", ["A"], [("A", "self")], [("A", "x", "self"), ("A", "y", "self")]),
    ("reference", ["A"], [("REF", "reference")], [("REF", "x", "reference"), ("REF", "y", "reference")]),
])
def test_choose_takes_chosen_from_the_data_source(source, good, rows, pairs):
    t = _task()
    t.reference = "REF"
    assert choose(t, good, ["x", "y", "z"], source, per_task=2) == (rows, pairs)
    assert choose(t, good, [], source, per_task=2)[1] == []  # nothing failed: no pair


class Sampler:
    """Samples for the uppercase tasks: right on the first draw, wrong (lowercase) on the others;
    every other task: two wrong answers. Records every prompt with its temperature."""

    name = "sampler"

    def __init__(self):
        self.prompts = []

    def generate(self, requests, params, progress=False):
        out = []
        for r in requests:
            self.prompts.append((params.temperature, r.prompt))
            word = r.prompt.rsplit("Write the word ", 1)[-1].split(" ")[0]
            answers = [word.upper(), word, word + " " + word] if "capital letters" in r.prompt.rsplit("\n\n", 1)[-1] \
                else ["A. B. C. D. E. F.", "A. B. C. D. E. F. G."]
            out.append([Completion(a, "stop") for a in answers][:params.n])
        return out


def test_self_source_keeps_only_passing_samples(base_tok):
    cfg = BootstrapConfig(train_tasks=60, samples=3, fewshot=1, data_source="self", per_task=2)
    sft, pairs, stats = stage_data(Sampler(), base_tok, "instructions", cfg, stage_seed=1)
    tasks = {t.id: t for t in make_tasks("instructions", 60, seed=1)}
    n_upper = sum(t.kind == "uppercase" for t in tasks.values())
    assert n_upper >= 2 and len(sft) == n_upper == stats["tasks_solved"] == stats["self_rows"]
    assert stats["references_used"] == 0 and stats["source"] == "self" and stats["passing_samples"] == n_upper
    for row in sft:  # every SFT answer is the model's own and passes its task's checks
        t = tasks[row["meta"]["task"]]
        assert row["meta"]["source"] == "self" and t.kind == "uppercase"
        assert check_response(t, row["messages"][-1]["content"])[0]
    assert len(pairs) == 2 * n_upper == stats["self_pairs"]  # one passing sample, paired with each of two failures
    for p in pairs:
        t = tasks[p["meta"]["task"]]
        assert p["prompt"][0]["content"] == t.instruction
        assert check_response(t, p["chosen"][0]["content"])[0] and not check_response(t, p["rejected"][0]["content"])[0]
    assert "self: " in summary_table([{"stage": "instructions", "framing": "hh", "accuracy": 0.5, "ci": [0, 1],
                                       "k": 1, "n": 2, "data": stats}])


def test_draw_tasks_excludes_and_refuses_an_exhausted_space():
    held = frozenset(t.instruction for t in make_tasks("questions", 40, seed=7))
    drawn = draw_tasks("questions", 300, seed=1, exclude=held)
    assert len(drawn) == 300 and not {t.instruction for t in drawn} & held
    distinct = draw_tasks("questions", 100, seed=1, distinct=True)
    assert len({t.instruction for t in distinct}) == 100
    from charter.config import ConfigError

    with pytest.raises(ConfigError, match=r"1000 distinct 'questions' tasks asked for, but only \d+ exist"):
        draw_tasks("questions", 1000, seed=1, distinct=True)


def test_heldout_tasks_are_never_trained_on_nor_shown(tmp_path, monkeypatch, base_tok):
    """The held-out set: distinct instructions, none among the training tasks or few-shot examples.
    (Before, training drew the same small template space: 87 of 100 documented eval tasks were trained on.)"""
    import charter.cai.bootstrap as bs

    gen = Sampler()
    monkeypatch.setattr(bs, "_load", lambda *a, **k: (gen, base_tok))
    monkeypatch.setattr(bs, "train_stage", lambda *a, **k: "trained")
    cfg = BootstrapConfig(out_dir=str(tmp_path), base_model="base", stages=["instructions"], train_tasks=200,
                          samples=2, eval_tasks=100, eval_families=["instructions"], fewshot=3,
                          baseline_framings=["fewshot"], eval_framings=["fewshot"], data_source="self")
    summary = bs.run_bootstrap(cfg)
    held = [t.instruction for t in bs.heldout_tasks(cfg)]
    assert len(set(held)) == len(held) == summary["eval_tasks"] == 100
    trained = {r["messages"][0]["content"] for r in read_jsonl(tmp_path / "stage_1_instructions" / "sft.jsonl")}
    sampled = [p for temp, p in gen.prompts if temp > 0]
    evaluated = [p for temp, p in gen.prompts if temp == 0]
    assert trained and len(sampled) == 200 and len(evaluated) == 200
    for prompt in sampled + evaluated:  # every instruction in a prompt, the examples' and the asked one's
        shown = [line.removeprefix("Instruction: ") for line in prompt.splitlines() if line.startswith("Instruction: ")]
        asked = shown.pop()
        assert not set(shown) & set(held) and (prompt in evaluated) == (asked in held)
    assert (tmp_path / "summary.md").read_text().startswith("Training data source: self; 100 held-out tasks.")
    assert summary["data_source"] == "self"


def test_self_source_with_nothing_solved_stops_with_one_line(tmp_path, monkeypatch, base_tok):
    import charter.cai.bootstrap as bs
    from charter.config import ConfigError

    class Wrong(Sampler):
        def generate(self, requests, params, progress=False):
            return [[Completion("A. B. C. D. E. F.", "stop")] * params.n for _ in requests]

    monkeypatch.setattr(bs, "_load", lambda *a, **k: (Wrong(), base_tok))
    monkeypatch.setattr(bs, "train_stage", lambda *a, **k: pytest.fail("trained on nothing"))
    cfg = BootstrapConfig(out_dir=str(tmp_path), base_model="base", stages=["instructions"], train_tasks=10,
                          eval_tasks=2, baseline_framings=["hh"], eval_framings=["hh"], data_source="self")
    with pytest.raises(ConfigError, match=r"stage_1_instructions: no training data: no sample passed its checks "
                                          r"\(0/10 tasks solved, data_source=self\)"):
        bs.run_bootstrap(cfg)


def test_base_lm_blocks_train_the_plain_causal_lm_loss():
    """The toy base LM trains through the shared loop's SFT task: on its text blocks that task's
    loss is exactly the causal-LM loss transformers computes from labels = input ids."""
    import torch

    from charter.cai.base_lm import EOS, base_documents, text_blocks, token_stream
    from charter.tiny import build_model
    from charter.train.sft import sft_task

    docs = base_documents(30)
    tok = build_tokenizer(vocab_size=300, chat_template=None, eos_token=EOS, corpus=docs)
    model = build_model(tok, hidden_size=32, layers=1, seed=0)
    stream = token_stream(docs, tok)
    blocks = text_blocks(stream, 16)
    assert len(blocks) == len(stream) // 16 and [t for b in blocks for t in b.input_ids] == stream[:len(blocks) * 16]
    batch = blocks[:4]
    task = sft_task(model, batch, keep_logits_only_for_targets=True)
    loss, sums = task.micro_loss(model, batch, task.window_norm(batch), world=1)
    ids = torch.tensor([b.input_ids for b in batch])
    assert sums["tokens"] == 4 * 15
    torch.testing.assert_close(loss, model(input_ids=ids, labels=ids).loss, rtol=1e-5, atol=1e-6)


def test_base_lm_build_is_a_template_free_model_folder(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charter.cai.base_lm import BaseLMConfig, build_base_lm

    cfg = BaseLMConfig(documents=40, vocab_size=300, hidden_size=32, layers=1, context=64, block=32, steps=3,
                       batch_size=4)
    out = build_base_lm(cfg, tmp_path / "base")
    record = json.loads((out / "base_lm.json").read_text())
    assert len(read_jsonl(out / "metrics.jsonl")) == 3 and record["final_loss"] > 0
    assert AutoTokenizer.from_pretrained(out).chat_template is None
    assert AutoModelForCausalLM.from_pretrained(out).config.tie_word_embeddings
    assert build_base_lm(cfg, tmp_path / "base") == out  # cached: not trained again
