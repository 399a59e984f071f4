"""Principle loaders: our YAML, the Anthropic-paper JSON and the llm-swarm JSON, plus clear errors."""
import json
import random

import pytest

from charter.cai.principles import DEFAULT_PRINCIPLES, load_principles, unwrap_anthropic
from charter.data.jsonl import DataError


def test_default_set_covers_three_categories():
    ps = load_principles()
    assert ps.source == str(DEFAULT_PRINCIPLES)
    assert {p.category for p in ps.principles} == {"harmlessness", "helpfulness", "honesty"}
    assert len({p.id for p in ps.principles}) == len(ps) >= 6
    assert ps.fewshot and ps.fewshot[0][0]["role"] == "user"


def test_anthropic_paper_json(tmp_path):
    data = {
        "harmful1": {"prompt": ["\n\nCritiqueRequest: Identify specific ways in which the response is harmful.\n\nCritique:"],
                     "edit_request": "\n\nRevisionRequest: Please rewrite the response to remove harmful content.\n\nRevision:"},
        "honest2": {"prompt": ["\n\nCritiqueRequest: Is anything untrue?\n\nCritique:", "unused second"],
                    "edit_request": "\n\nRevisionRequest: Make it true.\n\nRevision:"},
    }
    f = tmp_path / "anthropic.json"
    f.write_text(json.dumps(data))
    ps = load_principles(f)
    assert [p.id for p in ps.principles] == ["harmful1", "honest2"]
    assert ps.principles[0].critique == "Identify specific ways in which the response is harmful."
    assert ps.principles[0].revision == "Please rewrite the response to remove harmful content."
    assert ps.principles[1].critique == "Is anything untrue?"
    assert "Is anything untrue?" in ps.principles[1].comparison  # derived comparison question


def test_llm_swarm_json(tmp_path):
    data = {"constitutions": [{"critic": "Is the reply rude?", "revision": "Make it polite."},
                              {"critic": "Is it false?", "revision": "Fix the facts."}],
            "system_chat": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]}
    f = tmp_path / "swarm.json"
    f.write_text(json.dumps(data))
    ps = load_principles(f)
    assert [(p.critique, p.revision) for p in ps.principles] == [("Is the reply rude?", "Make it polite."),
                                                                ("Is it false?", "Fix the facts.")]
    assert ps.fewshot == data["system_chat"]


def test_ours_roundtrip_and_sampling_is_fresh(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("principles:\n" + "".join(
        f"  - {{id: p{i}, critique: c{i}, revision: r{i}, comparison: q{i}, category: honesty}}\n" for i in range(4)))
    ps = load_principles(f)
    assert ps.principles[2].comparison == "q2"
    picks = ps.sample(random.Random(0), 4)
    assert len({p.id for p in picks}) == 4  # distinct principles across rounds


def test_unwrap_leaves_plain_text():
    assert unwrap_anthropic("Just a request.") == "Just a request."


@pytest.mark.parametrize("content, needle", [
    ("principles:\n  - {id: a, revision: r}\n", "principles[0]: missing field 'critique'"),
    ("principles:\n  - {id: a, critique: c, revision: r, category: nice}\n", "principles[0]: field 'category'"),
    ("principles:\n  - {id: a, critique: c, revision: r}\n  - {id: a, critique: c, revision: r}\n",
     "principles[1]: duplicate id 'a'"),
    ("principles:\n  - {id: a, critique: c, revision: r, colour: red}\n", "unknown field(s) ['colour']"),
    ("principles: []\n", "principles: expected a non-empty list"),
    ("something: else\n", "unknown principles format"),
    ("principles:\n  - {id: a, critique: c\n  - x: [\n", "line 3: invalid YAML"),
])
def test_malformed_ours(tmp_path, content, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(content)
    with pytest.raises(DataError) as e:
        load_principles(f)
    assert str(f) in str(e.value) and needle in str(e.value)


@pytest.mark.parametrize("data, needle", [
    ({"constitutions": [{"critic": "x"}]}, "constitutions[0]: missing field 'revision'"),
    ({"constitutions": [{"critic": "x", "revision": "y"}], "system_chat": [[{"role": "bot", "content": "x"}]]},
     "system_chat[0][0]"),
    ({"p1": {"prompt": [], "edit_request": "x"}}, "'p1'.prompt"),
    ({"p1": {"prompt": ["x"]}}, "'p1': missing field 'edit_request'"),
])
def test_malformed_external(tmp_path, data, needle):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(data))
    with pytest.raises(DataError) as e:
        load_principles(f)
    assert str(f) in str(e.value) and needle in str(e.value)


def test_invalid_json_names_file_and_line(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('{"constitutions": [\n  {"critic": }]}')
    with pytest.raises(DataError, match=r"bad\.json: line 2: invalid JSON"):
        load_principles(f)
