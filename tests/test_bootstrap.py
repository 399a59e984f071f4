"""Bootstrapping: the template guard, and verifiable checks on positive and negative examples."""
import json

import pytest

from charter.backends.base import Completion
from charter.cai.bootstrap import (BootstrapConfig, Frame, TemplateLeakError, assert_no_template, complete, framed,
                                   stage_data, summary_table)
from charter.cai.verifiable import FAMILIES, Check, check_response, make_tasks, sentence_count
from charter.chat import render_prompt
from charter.toy.tiny import build_tokenizer


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
