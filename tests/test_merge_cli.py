"""`charter merge`: the CLI writes exactly what `merge_adapters` writes, and says clearly what is wrong."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_lora import make_adapter
from typer.testing import CliRunner

from charter.cli import app
from charter.commands.merge import parse_adapter_spec
from charter.train.lora import LoraSettings, merge_adapters


def invoke(*args):
    return CliRunner().invoke(app, ["merge", *map(str, args)], env={"TERMINAL_WIDTH": "1000"})


def flat(text: str) -> str:
    """Output with rich's panel borders and line wrapping removed."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", text).split())


def weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(a_dir, b_dir):
    a, b = weights(a_dir), weights(b_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge_cli")
    make_adapter(tiny_model_dir, root / "dpo", LoraSettings(r=4, alpha=8), seed=1)
    make_adapter(tiny_model_dir, root / "sft", LoraSettings(r=8, alpha=4, use_rslora=True), seed=2)
    return root


@pytest.mark.parametrize("spec, expected", [
    ("dpo", ("dpo", 1.0)),
    ("dpo:0.25", ("dpo", 0.25)),
    ("runs/a:b/sft", ("runs/a:b/sft", 1.0)),      # ':' inside the path, no weight
    ("runs/a:b/sft:-1e-1", ("runs/a:b/sft", -0.1)),  # only the last ':' splits
    ("x:1:1", ("x:1", 1.0)),                      # a folder literally named "x:1"
    ("dpo:", ("dpo:", 1.0)),
    (":0.5", (":0.5", 1.0)),                      # no path before the ':' -> not a weight
])
def test_parse_adapter_spec(spec, expected):
    assert parse_adapter_spec(spec) == expected


def test_paper_form_equals_merge_adapters_bit_for_bit(tiny_model_dir, adapters, tmp_path, monkeypatch):
    monkeypatch.chdir(adapters)  # so the adapters are literally `dpo:1.0 sft:0.25`
    res = invoke(tiny_model_dir, "dpo:1.0", "sft:0.25", "--out", tmp_path / "cli")
    assert res.exit_code == 0, res.output
    ref = merge_adapters(tiny_model_dir, [(adapters / "dpo", 1.0), (adapters / "sft", 0.25)], tmp_path / "ref")
    assert_same_weights(tmp_path / "cli", ref)
    base = weights(tiny_model_dir)
    assert any(not torch.equal(base[k], v) for k, v in weights(ref).items())  # the merge changed something
    record = json.loads((tmp_path / "cli" / "charter_merge.json").read_text())
    assert [(a["path"], a["weight"]) for a in record["adapters"]] == [("dpo", 1.0), ("sft", 0.25)]
    assert "dpo  weight 1" in res.output and "sft  weight 0.25" in res.output


def test_default_weight_with_colon_in_path(tiny_model_dir, adapters, tmp_path):
    odd = tmp_path / "a:b" / "sft"
    shutil.copytree(adapters / "sft", odd)
    res = invoke(tiny_model_dir, odd, "--out", tmp_path / "cli")
    assert res.exit_code == 0, res.output
    assert_same_weights(tmp_path / "cli", merge_adapters(tiny_model_dir, [(odd, 1.0)], tmp_path / "ref"))


def test_export_takes_base_from_adapter_config(tiny_model_dir, adapters, tmp_path):
    cfg = json.loads((adapters / "dpo" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_model_dir)
    res = invoke("--export", f"{adapters / 'dpo'}:0.5", "--out", tmp_path / "cli")
    assert res.exit_code == 0, res.output
    assert_same_weights(tmp_path / "cli", merge_adapters(tiny_model_dir, [(adapters / "dpo", 0.5)], tmp_path / "ref"))


def test_export_of_chained_sft_adapter_includes_the_dpo_it_was_trained_on(tiny_model_dir, adapters, tmp_path):
    """A Charter SFT output trained on base+DPO records that chain; exporting it must keep the DPO delta."""
    sft = tmp_path / "sft"
    shutil.copytree(adapters / "sft", sft)
    (sft / "charter_train.json").write_text(json.dumps(
        {"kind": "sft", "base_model": str(tiny_model_dir), "base_adapters": [str(adapters / "dpo")]}))
    res = invoke("--export", f"{sft}:0.25", "--out", tmp_path / "cli")
    assert res.exit_code == 0, res.output
    ref = merge_adapters(tiny_model_dir, [(adapters / "dpo", 1.0), (sft, 0.25)], tmp_path / "ref")
    assert_same_weights(tmp_path / "cli", ref)


def test_clear_errors(tiny_model_dir, adapters, tmp_path):
    def fails(*args) -> str:
        res = invoke(*args)
        assert res.exit_code == 2, res.output
        return flat(res.output)

    out = tmp_path / "out"
    missing = tmp_path / "nope"
    assert f"{missing}: no such adapter folder" in fails(tiny_model_dir, f"{missing}:0.5", "--out", out)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "adapter_config.json").write_text("{}")
    msg = fails(tiny_model_dir, plain, "--out", out)
    assert f"{plain}: not a PEFT adapter folder (missing adapter_model.safetensors)" in msg
    assert f"{plain}: not a model folder" in fails(plain, adapters / "dpo", "--out", out)
    assert f"{missing}: no such model folder" in fails(missing, adapters / "dpo", "--out", out)
    assert "give BASE and at least one ADAPTER" in fails(tiny_model_dir, "--out", out)
    assert "give no positional arguments" in fails(tiny_model_dir, "--export", adapters / "dpo", "--out", out)
    assert "weight must be a finite number" in fails(tiny_model_dir, f"{adapters / 'dpo'}:nan", "--out", out)
    for inside in (adapters / "dpo", adapters):  # the input itself, or a folder holding it
        assert f"would replace the input {adapters / 'dpo'}" in fails(tiny_model_dir, adapters / "dpo",
                                                                      "--out", inside, "--force")
    (out / "keep.txt").parent.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "already exists (use --force" in fails(tiny_model_dir, adapters / "dpo", "--out", out)
    assert (out / "keep.txt").read_text() == "mine" and not (tmp_path / "out" / "config.json").exists()
