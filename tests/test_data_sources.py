"""Every record input also reads a Hugging Face `datasets` source: a local parquet/arrow/json folder,
a `save_to_disk` folder, a parquet/arrow file (and a Hub name, through the same `datasets` call).
Rows read through `datasets` must equal the JSONL rows, and errors name the row index and field."""
from __future__ import annotations

import json

import datasets
import pytest
from typer.testing import CliRunner

from charter.data.jsonl import DataError, read_jsonl, write_jsonl
from charter.data.sources import data_hash, is_dataset, iter_records

LINES = ["the sea is blue.", "cats sleep all day.", "rain falls on the hill.", "bread is warm."]
PAIRS = [{"prompt": [{"role": "user", "content": a}], "chosen": [{"role": "assistant", "content": b}],
          "rejected": [{"role": "assistant", "content": a}]} for a, b in zip(LINES, LINES[1:] + LINES[:1])]
SFT = [{"messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}]}
       for a, b in zip(LINES, reversed(LINES))]


def shapes(rows, tmp_path, name):
    """The same rows as JSONL and in each `datasets` shape Charter reads."""
    ds = datasets.Dataset.from_list(rows)
    out = {"jsonl": tmp_path / f"{name}.jsonl"}
    write_jsonl(out["jsonl"], rows)
    (tmp_path / f"{name}-parquet").mkdir()
    ds.to_parquet(str(tmp_path / f"{name}-parquet" / "train-00000.parquet"))
    out["parquet folder"] = tmp_path / f"{name}-parquet"
    (tmp_path / f"{name}-json").mkdir()
    ds.to_json(str(tmp_path / f"{name}-json" / "data.json"))
    out["json folder"] = tmp_path / f"{name}-json"
    ds.save_to_disk(str(tmp_path / f"{name}-saved"))
    out["save_to_disk"] = tmp_path / f"{name}-saved"
    ds.to_parquet(str(tmp_path / f"{name}.parquet"))
    out["parquet file"] = tmp_path / f"{name}.parquet"
    return out


def test_every_shape_yields_the_jsonl_rows(tmp_path):
    for kind, path in shapes(PAIRS, tmp_path, "pairs").items():
        assert [row for _, row in iter_records(path)] == PAIRS, kind
        assert is_dataset(path) == (kind != "jsonl"), kind
    assert not is_dataset(tmp_path / "missing.jsonl") and is_dataset("org/name") and is_dataset("org/name:test")


def test_training_data_encodes_identically(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from charter.train.data import load_pairs, read_sft

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = lambda pairs: [(p.chosen.input_ids, p.rejected.input_ids, p.chosen.labels) for p in pairs]  # noqa: E731
    pair_shapes, sft_shapes = shapes(PAIRS, tmp_path, "pairs"), shapes(SFT, tmp_path, "sft")
    want_pairs, want_sft = ids(load_pairs(pair_shapes["jsonl"], tok, 256)[0]), read_sft(sft_shapes["jsonl"], tok, 256)[0]
    for kind in ("parquet folder", "save_to_disk", "parquet file"):
        assert ids(load_pairs(pair_shapes[kind], tok, 256)[0]) == want_pairs, kind
        got = read_sft(sft_shapes[kind], tok, 256)[0]
        assert [(s.input_ids, s.labels) for s in got] == [(s.input_ids, s.labels) for s in want_sft], kind


def test_prompts_and_eval_inputs_read_datasets(tmp_path):
    from charter.evaluate.ab import read_ab
    from charter.evaluate.capability import read_mc
    from charter.evaluate.runner import load_prompts
    from charter.stages.prompts import general_prompts

    prompts = shapes([{"prompt": f"Question {i}?"} for i in range(5)], tmp_path, "prompts")["parquet folder"]
    assert load_prompts(str(prompts), 3) == ["Question 0?", "Question 1?", "Question 2?"]
    assert [p["prompt"] for p in general_prompts(str(prompts))] == [f"Question {i}?" for i in range(5)]
    mc = shapes([{"question": "Sun?", "choices": ["hot", "cold"], "answer": 0}], tmp_path, "mc")["save_to_disk"]
    assert read_mc(mc)[0].choices == ["hot", "cold"]
    ab = shapes([{"prompt": "Which? Options: (A) x (B) y", "target": "B"}], tmp_path, "ab")["parquet folder"]
    assert read_ab(str(ab))[0].target == 1


def test_bad_rows_name_the_row_index_and_field(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from charter.train.data import load_pairs

    rows = PAIRS[:2] + [{**PAIRS[2], "label_prob": 1.5}]
    rows[0], rows[1] = {**rows[0], "label_prob": 0.9}, {**rows[1], "label_prob": None}
    folder = shapes(rows, tmp_path, "bad")["parquet folder"]
    with pytest.raises(DataError) as e:
        load_pairs(folder, AutoTokenizer.from_pretrained(tiny_model_dir), 256)
    assert str(e.value).startswith(f"{folder}:row 2: label_prob: expected a number in [0, 1], got 1.5")


def test_mc_error_names_row_and_field(tmp_path):
    from charter.evaluate.capability import read_mc

    folder = shapes([{"question": "q", "choices": ["a", "b"], "answer": 0},
                     {"question": "q", "choices": ["a", "b"], "answer": 5}], tmp_path, "mc")["parquet folder"]
    with pytest.raises(DataError, match=r"mc-parquet:row 1: field 'answer' must be a choice index"):
        read_mc(folder)


def test_unknown_hub_name_is_one_line(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        list(iter_records("no-such-org/no-such-dataset"))
    msg = str(e.value)
    assert msg.startswith("no-such-org/no-such-dataset: cannot read it as a file, folder or Hub dataset") and "\n" not in msg


def test_data_hash_follows_content(tmp_path):
    a = shapes(PAIRS, tmp_path, "a")
    b = shapes(PAIRS[:3], tmp_path, "b")
    assert data_hash(a["save_to_disk"]) == data_hash(a["save_to_disk"]) != data_hash(b["save_to_disk"])
    assert data_hash(a["jsonl"]) != data_hash(b["jsonl"])


def test_train_and_export_cli_take_a_folder(tiny_model_dir, tmp_path):
    from charter.cli import app

    folder = shapes(PAIRS, tmp_path, "pairs")["parquet folder"]
    res = CliRunner().invoke(app, ["data", "export", str(folder), "-f", "together-dpo", "-o", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 0, res.output
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 4
    res = CliRunner().invoke(app, ["train", "dpo", f"model={tiny_model_dir}", f"data={folder}", "max_steps=1",
                                   "batch_size=2", f"output_dir={tmp_path / 'dpo'}", "resume=false"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
    res = CliRunner().invoke(app, ["train", "dpo", f"model={tiny_model_dir}", f"data={tmp_path / 'empty-folder'}",
                                   f"output_dir={tmp_path / 'x'}"])
    assert res.exit_code == 2 and "empty-folder: no such file" in res.output
