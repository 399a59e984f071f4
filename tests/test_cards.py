"""Model and dataset cards, read back with huggingface_hub's own parsers (ModelCard, DatasetCard)
and `datasets` (the dataset card's `configs` must point `load_dataset` at the exported file)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard
from typer.testing import CliRunner

from charter.cards import write_run_cards
from charter.data.jsonl import write_jsonl

LINES = ["the sea is blue.", "cats sleep all day.", "rain falls on the hill.", "bread is warm."]
META = {"constitution": "warm", "constitution_hash": "0123456789abcdef", "teacher": "t", "student": "s"}


@pytest.fixture(scope="module")
def merged(tiny_model_dir, tmp_path_factory):
    """A tiny base whose card names a Hub base and a license, DPO then SFT (LoRA, 2 steps each), merged."""
    from charter.train.dpo import DPOConfig, train_dpo
    from charter.train.lora import LoraSettings
    from charter.train.sft import SFTConfig, train_sft
    from charter.train.stage_merge import merge_stages

    d = tmp_path_factory.mktemp("cards")
    base = d / "base"
    shutil.copytree(tiny_model_dir, base)
    (base / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: org/tiny-llama\n---\n# tiny\n")
    write_jsonl(d / "pairs.jsonl", [{"prompt": [{"role": "user", "content": a}],
                                     "chosen": [{"role": "assistant", "content": b}],
                                     "rejected": [{"role": "assistant", "content": a}], "meta": META}
                                    for a, b in zip(LINES, LINES[1:] + LINES[:1])])
    write_jsonl(d / "sft.jsonl", [{"messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}]}
                                  for a, b in zip(LINES, reversed(LINES))])
    common = dict(lr=3e-2, max_steps=2, batch_size=4, warmup_ratio=0.0, resume=False, lora=LoraSettings(r=4, alpha=8))
    dpo = train_dpo(DPOConfig(model=str(base), data=str(d / "pairs.jsonl"), output_dir=str(d / "dpo"), beta=0.2,
                              **common))
    sft = train_sft(SFTConfig(model=str(dpo), data=str(d / "sft.jsonl"), output_dir=str(d / "sft"), **common))
    return base, merge_stages(base, [(dpo, 1.0), (sft, 0.25)], d / "merged")


def test_merged_folder_has_a_card_hub_can_parse(merged):
    base, out = merged
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert (data.base_model, data.license, data.library_name) == ("org/tiny-llama", "apache-2.0", "transformers")
    assert {"charter", "character-training", "dpo", "sft"} <= set(data.tags)
    text = card.text
    assert "**warm** (hash `0123456789abcdef`)" in text  # from the pairs' provenance
    dpo_row = next(line for line in text.splitlines() if line.startswith("| dpo |"))
    assert dpo_row.startswith("| dpo | 1 | 2 | 4 |") and "beta=0.2" in dpo_row and "LoRA r=4, alpha=8" in dpo_row
    assert "rewards/accuracies=" in dpo_row
    assert next(line for line in text.splitlines() if line.startswith("| sft |")).startswith("| sft | 0.25 | 2 | 4 |")


def test_run_card_carries_the_run_figures(merged, tmp_path):
    from charter.constitution import load_constitution

    _, model = merged
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"stages": {"pairs": {"counts": {"warm": {"pairs": 40, "dropped": 3}}}}}))
    prop = lambda k, n, lo, hi: {"k": k, "n": n, "value": k / n, "lo": lo, "hi": hi}  # noqa: E731
    summary = {"systems": ["base", "dpo+sft"], "heldout": {"overlap": 0},
               "adherence": {"base": {"per_persona": {"warm": prop(1, 50, 0.0035, 0.1050)}},
                             "dpo+sft": {"per_persona": {"warm": prop(45, 50, 0.7864, 0.9565)}}},
               "well_formed": {"base": prop(49, 50, 0.89, 1.0), "dpo+sft": prop(44, 50, 0.76, 0.94)},
               "relevant": {"base": {"k": 40, "n": 50, "rate": 0.8, "ci": [0.67, 0.89]},  # a summary's older shape
                            "dpo+sft": prop(39, 50, 0.65, 0.87)}}
    constitution = load_constitution("sarcasm")
    [path] = write_run_cards(run, summary, {"warm": (constitution, model)})
    card = ModelCard.load(path)
    result = card.data.eval_results[0]
    assert (result.metric_type, result.metric_value) == ("adherence", 0.9)
    assert f"hash `{constitution.hash()}`" in card.text and constitution.traits[0].text in card.text
    assert "| DPO + SFT, merged (this model) | 0.900 [0.79, 0.96] (n=50) | 0.880 [0.76, 0.94] (n=50) |" in card.text
    assert "- **pairs**: pairs=40, dropped=3" in card.text
    assert "| base model | 0.020 [0.00, 0.10] (n=50) | 0.980 [0.89, 1.00] (n=50) | 0.800 [0.67, 0.89] (n=50) |" in card.text
    assert "Eval prompts also seen in training: 0." in card.text


def test_stage_output_checks_ignore_the_card(tmp_path):
    from charter.integrity import dir_hash, output_record, outputs_intact

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    before, rec = dir_hash(tmp_path), output_record(tmp_path)
    (tmp_path / "README.md").write_text("---\ntags: [charter]\n---\n")
    assert dir_hash(tmp_path) == before  # the report rewrites cards; the merge stage stays cached
    assert outputs_intact(tmp_path, rec) and "README.md" not in output_record(tmp_path)["files"]
    (tmp_path / "model.safetensors").write_bytes(b"other")
    assert dir_hash(tmp_path) != before and not outputs_intact(tmp_path, rec)


def test_data_export_writes_a_dataset_card(tmp_path):
    import datasets

    from charter.cli import app

    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b", "meta": META}] * 3)
    out = tmp_path / "export" / "together.jsonl"
    res = CliRunner().invoke(app, ["data", "export", str(tmp_path / "pairs.jsonl"), "-f", "together-dpo", "-o", str(out)])
    assert res.exit_code == 0, res.output
    card = DatasetCard.load(out.parent / "README.md")
    assert card.data.tags == ["charter", "together-dpo"] and card.data.size_categories == "n<1K"
    assert "3 rows in the `together-dpo` format" in card.text and "constitution_hash: `0123456789abcdef`" in card.text
    (out.parent / "other.jsonl").write_text('{"x": 1}\n')  # the card's configs name the export, not its neighbours
    loaded = datasets.load_dataset(str(out.parent), split="train")
    assert loaded.num_rows == 3 and "preferred_output" in loaded.column_names
    # a README the user wrote is kept
    (out.parent / "README.md").write_text("# my notes\n")
    res = CliRunner().invoke(app, ["data", "export", str(tmp_path / "pairs.jsonl"), "-f", "together-dpo", "-o", str(out)])
    assert res.exit_code == 0 and (out.parent / "README.md").read_text() == "# my notes\n"
    assert "not a Charter card" in res.output


def test_hub_base_license_comes_from_the_cached_card(tmp_path, monkeypatch):
    """A Hub-id base: `base_model` is the id, `license` is read from its card in the HF cache (offline)."""
    import huggingface_hub.constants as hub_constants

    from charter.cards import base_metadata

    snapshot = tmp_path / "models--org--base" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "README.md").write_text("---\nlicense: mit\n---\n# base\n")
    (tmp_path / "models--org--base" / "refs").mkdir()
    (tmp_path / "models--org--base" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    assert base_metadata("org/base") == {"base_model": "org/base", "license": "mit"}
    assert base_metadata("org/not-cached") == {"base_model": "org/not-cached", "license": None}


def test_toy_base_is_named_not_its_cache_path(tmp_path, caplog):
    from charter.cards import build_model_card

    base = tmp_path / "home" / "user" / ".cache" / "charter" / "toy" / "abc123"
    base.mkdir(parents=True)
    (base / "toy_build.json").write_text(json.dumps({"weights_sha256": "f" * 64}))
    (base / "README.md").write_text("A plain note, no front matter.\n")
    card = build_model_card(str(base), [])
    assert "the toy world's base model" in card.text and "f" * 16 in card.text
    assert str(base) not in card.text and "metadata block" not in caplog.text
    plain = tmp_path / "my-model"
    plain.mkdir()
    assert f"`{plain}`" in build_model_card(str(plain), []).text  # a folder the user chose is named as given
