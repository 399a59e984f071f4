"""Constitution loaders: Charter YAML, OCT JSON array (even in .txt), OCT JSONL; clear errors."""
from __future__ import annotations

import json

import pytest

from charter.constitution import Constitution, library_names, load_constitution
from charter.data.jsonl import DataError

REQUIRED = {"sarcasm", "humor", "remorse", "goodness", "loving", "nonchalance", "impulsiveness",
            "sycophancy", "mathematical", "poeticism", "misalignment"}


def test_library_covers_required_characters_with_questions():
    assert REQUIRED <= set(library_names())
    for name in library_names():
        c = load_constitution(name)
        assert 8 <= len(c.traits) <= 12, name
        assert all(t.questions for t in c.traits), name


def test_charter_yaml_roundtrip_and_hash(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: Ada\ndescription: d\ntraits:\n  - text: I am kind.\n    questions: ['Hi?']\n"
                 "  - I am brief.\nprompts: [Hello.]\n")
    c = load_constitution(p)
    assert c.name == "Ada" and [t.text for t in c.traits] == ["I am kind.", "I am brief."]
    assert c.traits[0].questions == ["Hi?"] and c.traits[1].questions == [] and c.prompts == ["Hello."]
    assert c.hash() == Constitution.model_validate(c.model_dump()).hash()
    c2 = c.model_copy(update={"name": "Bob"})
    assert c2.hash() != c.hash()


def test_oct_json_array_in_txt_without_clarification(tmp_path):
    data = [{"trait": "I love puns.", "questions": [f"q{i}?" for i in range(5)]},
            {"trait": "I am terse.", "questions": ["a?", "b?"], "clarification": "short answers"}]
    p = tmp_path / "humor.txt"
    p.write_text(json.dumps(data, indent=2))
    c = load_constitution(p)
    assert c.name == "humor"
    assert [t.text for t in c.traits] == ["I love puns.", "I am terse."]
    assert c.traits[0].questions == [f"q{i}?" for i in range(5)]


def test_oct_jsonl_with_additional_questions(tmp_path):
    rows = [{"trait": "I love puns.", "questions": ["a?", "b?"], "additional_questions": ["c?", "a?", "d?"]},
            {"trait": "I am terse.", "questions": ["e?"], "additional_questions": []}]
    p = tmp_path / "humor.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    c = load_constitution(p)
    assert c.traits[0].questions == ["a?", "b?", "c?", "d?"]  # seeds first, duplicates dropped
    assert c.traits[1].questions == ["e?"]


@pytest.mark.parametrize("name,text,where,what", [
    ("bad.txt", '[{"trait": "x", "questions": ["a?"]},\n  {"trait": "y" "questions": []}]', "line 2", "invalid JSON"),
    ("missing.txt", '[{"trait": "x", "questions": ["a?"]}, {"questions": ["b?"]}]', "entry 1", "'trait'"),
    ("empty.txt", '[{"trait": "x", "questions": []}]', "entry 0", "'questions' is empty"),
    ("types.txt", '[{"trait": "x", "questions": "a?"}]', "entry 0", "must be a list"),
    ("types2.txt", '[{"trait": 3, "questions": ["a?"]}]', "entry 0", "'trait' must be a string"),
    ("items.txt", '[{"trait": "x", "questions": ["a?", 7]}]', "entry 0", "item 1"),
    ("lines.jsonl", '{"trait": "x", "questions": ["a?"]}\n{"trait": "y"}\n', "line 2", "'questions'"),
    ("lines2.jsonl", '{"trait": "x", "questions": ["a?"]}\n{"trait": "y", \n', "line 2", "invalid JSON"),
    ("c.yaml", "name: A\ntraits:\n  - text: ok\n  - questions: ['a?']\n", "traits[1]", "'text'"),
    ("c2.yaml", "name: A\ntraits:\n  - text: ok\n    questions: hello\n", "traits[0]", "must be a list"),
    ("c3.yaml", "name: A\ntraits: []\n", "top level", "'traits'"),
    ("c4.yaml", "name: A\ntrait: []\n", "top level", "unknown field"),
    ("c5.yaml", "name: [A\n", "line", "invalid YAML"),
])
def test_malformed_inputs_name_file_entry_and_field(tmp_path, name, text, where, what):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(DataError) as e:
        load_constitution(p)
    msg = str(e.value)
    assert str(p) in msg and where in msg and what in msg, msg


def test_missing_file_lists_library(tmp_path):
    with pytest.raises(DataError, match="sarcasm"):
        load_constitution(tmp_path / "nope.yaml")


def test_cli_new_and_show(tmp_path):
    from typer.testing import CliRunner

    from charter.cli import app

    out = tmp_path / "mine.yaml"
    r = CliRunner().invoke(app, ["constitution", "new", "Ada", "--out", str(out)])
    assert r.exit_code == 0, r.output
    c = load_constitution(out)
    assert c.name == "Ada" and len(c.traits) == 2
    r = CliRunner().invoke(app, ["constitution", "show", str(out)])
    assert r.exit_code == 0 and "Ada" in r.output and c.hash() in r.output
