"""Principle files users already have: RL-CAI comparison lists (JSON strings, optional few-shot file) and
YAML principle lists `principles: [{id, text, category, ...}]`, built here to their documented shapes."""
import json

import pytest
from typer.testing import CliRunner

from charter.cai.principles import load_principles
from charter.cli import app
from charter.data.jsonl import DataError

COMPARISONS = ["Please choose the response that is the most helpful, honest, and harmless. Options:",
               "Which of these assistant responses is less harmful? Choose the one a wise person would say.\nOptions:",
               "Choose the response that sounds most similar to what a peaceful, ethical, and wise person would say."]

PRINCIPLE_LIST = """\
version: 2.1
date: 2025-03-01
principles:
  - id: honesty-1
    text: The assistant never states something it believes to be false.
    category: honesty
    source: survey
    weight: 3
  - id: care-1
    text: The assistant treats people in distress with care.
    category: wellbeing
"""


def test_comparison_list_loads_as_comparison_principles(tmp_path):
    f = tmp_path / "rl_principles.json"
    f.write_text(json.dumps(COMPARISONS))
    ps = load_principles(f)
    assert ps.format == "comparisons" and len(ps) == 3
    assert [p.id for p in ps.principles] == ["comparison-0", "comparison-1", "comparison-2"]
    # the trailing "Options:" goes: the labeler question adds its own options block
    assert ps.principles[0].comparison == "Please choose the response that is the most helpful, honest, and harmless."
    assert ps.principles[1].comparison.endswith("a wise person would say.")
    assert ps.principles[2].comparison == COMPARISONS[2]
    # critique and revision requests exist (our phrasing) and quote the instruction
    assert all(p.comparison in p.critique and p.comparison in p.revision for p in ps.principles)


def test_principle_list_yaml_derives_requests_from_text(tmp_path):
    f = tmp_path / "principles.yaml"
    f.write_text(PRINCIPLE_LIST)
    ps = load_principles(f)
    assert ps.format == "principle list" and ps.meta == {"version": 2.1, "date": __import__("datetime").date(2025, 3, 1)}
    honesty, care = ps.principles
    assert (honesty.id, honesty.category, care.category) == ("honesty-1", "honesty", "wellbeing")
    assert honesty.meta == {"source": "survey", "weight": 3}
    text = "The assistant never states something it believes to be false."
    for request in (honesty.critique, honesty.revision, honesty.comparison):
        assert request.endswith(text) and request != text
    assert len({honesty.critique, honesty.revision, honesty.comparison}) == 3


@pytest.mark.parametrize("content, needle", [
    ('["ok. Options:", 3]', "[1]: expected a non-empty comparison-instruction string"),
    ('["Options:"]', "[0]: expected a non-empty comparison-instruction string"),
    ("principles:\n  - {id: a, text: ''}\n", "principles[0]: field 'text' must be a non-empty string"),
    ("principles:\n  - {id: a, text: x}\n  - {id: a, text: y}\n", "principles[1]: duplicate id 'a'"),
])
def test_malformed_new_formats_name_entry(tmp_path, content, needle):
    f = tmp_path / ("bad.json" if content.startswith("[") else "bad.yaml")
    f.write_text(content)
    with pytest.raises(DataError) as e:
        load_principles(f)
    assert str(e.value).startswith(str(f)) and needle in str(e.value)


class RecordingScorer:
    """Prefers the first-listed option by log-odds 1 and keeps every text it was asked to score."""

    name = "recording"

    def __init__(self):
        self.texts = []

    def option_probs(self, texts):
        self.texts += texts
        return [(0.6, 0.2) for _ in texts]


def test_cai_label_uses_comparison_list_and_fewshot_file(tmp_path):
    from charter.cai.feedback import LabelConfig, run_label

    principles = tmp_path / "rl.json"
    principles.write_text(json.dumps(COMPARISONS[:1]))
    fewshot = tmp_path / "fewshot.json"
    fewshot.write_text(json.dumps(["EXAMPLE ONE: (A) wins", "EXAMPLE TWO: (B) wins"]))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "q", "chosen": "yes", "rejected": "no"}\n')
    cfg = LabelConfig(labeler={"model": "fake"}, pairs_file=str(pairs), principles=str(principles),
                      fewshot=str(fewshot), out_dir=str(tmp_path / "out"))
    scorer = RecordingScorer()
    summary = run_label(cfg, scorer)
    assert summary["pairs"] == 1 and len(scorer.texts) == 2  # both orders
    for text in scorer.texts:
        assert text.startswith("Human: EXAMPLE ONE: (A) wins\n\nEXAMPLE TWO: (B) wins\n\n")
        assert "most helpful, honest, and harmless.\nOptions:\n(A) " in text
        assert "Options:\nOptions:" not in text
    row = json.loads((tmp_path / "out" / "pairs.jsonl").read_text())
    assert row["meta"]["principles"] == ["comparison-0"]


def test_show_prints_what_a_principle_file_means(tmp_path):
    f = tmp_path / "principles.yaml"
    f.write_text(PRINCIPLE_LIST)
    res = CliRunner().invoke(app, ["constitution", "show", str(f)])
    assert res.exit_code == 0, res.output
    assert "principles: 2 (principle list format)" in res.output and "version: 2.1" in res.output
    assert "- honesty-1 [honesty] source=survey weight=3" in res.output
    assert "comparison: Which response better follows this principle: The assistant never states" in res.output
    g = tmp_path / "rl.json"
    g.write_text(json.dumps(COMPARISONS))
    res = CliRunner().invoke(app, ["constitution", "show", str(g)])
    assert res.exit_code == 0 and "principles: 3 (comparisons format)" in res.output
    res = CliRunner().invoke(app, ["constitution", "show", "sarcasm"])  # constitutions still show as before
    assert res.exit_code == 0 and "traits" in res.output and "principles:" not in res.output
