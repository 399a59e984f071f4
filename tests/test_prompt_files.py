"""One reader for prompt files (`charter.data.texts`): the same file means the same prompts to every command."""
import json

import pytest

from charter.cai.revise import load_prompts as revise_prompts
from charter.data.jsonl import DataError
from charter.data.texts import read_conversations, read_texts
from charter.evaluate.preferences import load_traits
from charter.evaluate.runner import load_prompts as eval_prompts
from charter.stages.prompts import general_prompts
from charter.stages.reflection import load_text_list

ROWS = [
    {"conversations": ["How do tides work?", "The moon pulls..."]},
    {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": " Hi? "},
                  {"role": "assistant", "content": "Hello."}]},
    {"prompt": "Name a river."},
    {"instruction": "Add 2 and 3."},
    {"text": "Name a river."},  # a repeat: dropped
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_txt_lines_comments_blanks_repeats(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# my prompts\n  Who are you?  \n\n#not a prompt\nWhat do you value?\nWho are you?\n")
    assert read_texts(f) == ["Who are you?", "What do you value?"]
    assert read_texts(f, limit=1) == ["Who are you?"]


def test_jsonl_fields_in_order_and_conversations(tmp_path):
    f = _write(tmp_path / "p.jsonl", ROWS)
    assert read_texts(f) == ["How do tides work?", "Hi?", "Name a river.", "Add 2 and 3."]
    convs = read_conversations(f)
    assert convs[1] == [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi?"}]  # up to the user turn
    assert len(convs) == 4
    g = _write(tmp_path / "g.jsonl", [{"greeting": "Hello.", "prompt": "ignored"}])
    assert read_texts(g, "greeting") == ["Hello."]


def test_json_and_yaml_lists(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(["A?", {"prompt": "B?"}]))
    (tmp_path / "p.yaml").write_text("- A?\n- prompt: B?\n")
    assert read_texts(tmp_path / "p.json") == read_texts(tmp_path / "p.yaml") == ["A?", "B?"]
    (tmp_path / "bad.yaml").write_text("- A?\n- 3\n")
    with pytest.raises(DataError, match=r"bad.yaml: entry 1: expected a non-empty string"):
        read_texts(tmp_path / "bad.yaml")


@pytest.mark.parametrize("row, why", [({"answer": "no prompt"}, "field 'prompt': no user prompt"),
                                      ({"prompt": ""}, "field 'prompt': no user prompt"),
                                      ({"messages": [{"role": "assistant", "content": "x"}]}, "field 'messages'"),
                                      ({"messages": [{"role": "user", "content": " "}]}, "field 'messages'")])
def test_bad_row_is_one_line_naming_file_line_field(tmp_path, row, why):
    f = _write(tmp_path / "bad.jsonl", [{"prompt": "ok"}, row])
    with pytest.raises(DataError) as e:
        read_texts(f)
    assert str(e.value).startswith(f"{f}:2: {why}") and "\n" not in str(e.value)


def test_check_sees_every_text_with_its_location(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("fine\n\nWhat is {topic}?\n")
    with pytest.raises(DataError, match=r"p.txt:3: unformatted placeholder"):
        load_text_list(f)
    (tmp_path / "empty.txt").write_text("# only a comment\n")
    with pytest.raises(DataError, match=r"empty.txt: no prompts"):
        read_texts(tmp_path / "empty.txt")


def test_every_command_reads_a_file_the_same_way(tmp_path):
    for f in (_write(tmp_path / "p.jsonl", ROWS), tmp_path / "p.txt"):
        if f.suffix == ".txt":
            f.write_text("# comment\nHow do tides work?\nHi?\nHi?\n")
        want = read_texts(f)
        assert eval_prompts(str(f), 100) == want
        assert [r["prompt"] for r in general_prompts(str(f))] == want
        assert [c[-1]["content"] for c in revise_prompts([], str(f))] == want
        assert load_text_list(f) == want
        assert load_traits(f) == want


def test_builtin_traits():
    traits = load_traits()
    assert len(traits) == 159 == len(set(traits)) and all(t.isalpha() for t in traits)
