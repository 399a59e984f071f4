"""End to end through the CLI on a tiny local model: SL-CAI -> SFT -> AI feedback -> DPO (soft labels)."""
import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from charter.cli import app

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Single-threaded torch: on a shared 2-core box, oversubscribed threads run ~10x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def _invoke(args):
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_sl_cai_sft_feedback_dpo(tmp_path, tiny_model_dir):
    prompts = ["Tell me about the sea.", "How do I help a sad friend?", "Write a poem about the moon.",
               "What is a good book?", "Why is the sky dark at night?", "Tell me a story about a cat."]
    backend = {"kind": "hf", "model": str(tiny_model_dir), "device": "cpu"}
    sampling = {"temperature": 1.0, "max_new_tokens": 16, "seed": 0}
    revise_cfg = tmp_path / "revise.yaml"
    revise_cfg.write_text(yaml.safe_dump({"backend": backend, "prompts": prompts, "rounds": 2, "fewshot": 0,
                                          "drop_truncated": False, "sampling": sampling, "out_dir": str(tmp_path / "revise")}))
    _invoke(["cai", "revise", str(revise_cfg)])
    summary = json.loads((tmp_path / "revise" / "summary.json").read_text())
    chains = [json.loads(x) for x in (tmp_path / "revise" / "chains.jsonl").read_text().splitlines()]
    assert summary["prompts"] == len(chains) == 6 and all(len(c["rounds"]) == 2 for c in chains)
    assert summary["sft_rows"] >= 1 and summary["pairs"] + sum(summary["dropped"].values()) == 6
    assert summary["pairs"] >= 3

    sft_cfg = tmp_path / "sft.yaml"
    sft_cfg.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "data": str(tmp_path / "revise" / "sft.jsonl"),
                                       "output_dir": str(tmp_path / "sft"), "max_steps": 2, "batch_size": 4,
                                       "lr": 1e-3, "max_length": 256}))
    _invoke(["train", "sft", str(sft_cfg)])

    label_cfg = tmp_path / "label.yaml"
    label_cfg.write_text(yaml.safe_dump({
        "labeler": {"kind": "hf", "model": str(tmp_path / "sft"), "device": "cpu"},
        "policy": {"kind": "hf", "model": str(tmp_path / "sft"), "device": "cpu"},
        "policy_sampling": sampling, "prompts": prompts, "ensemble": 2, "out_dir": str(tmp_path / "label")}))
    _invoke(["cai", "label", str(label_cfg)])
    lab = json.loads((tmp_path / "label" / "summary.json").read_text())
    pairs = [json.loads(x) for x in (tmp_path / "label" / "pairs.jsonl").read_text().splitlines()]
    assert lab["pairs"] == len(pairs) == 6
    assert all(0.5 <= p["label_prob"] <= 1 and len(p["meta"]["principles"]) == 2 for p in pairs)
    assert 0 < lab["mean_option_mass"] <= 1

    dpo_cfg = tmp_path / "dpo.yaml"
    dpo_cfg.write_text(yaml.safe_dump({"model": str(tmp_path / "sft"), "data": str(tmp_path / "label" / "pairs.jsonl"),
                                       "output_dir": str(tmp_path / "dpo"), "max_steps": 2, "batch_size": 3,
                                       "lr": 1e-3, "max_length": 512}))
    _invoke(["train", "dpo", str(dpo_cfg)])
    assert (tmp_path / "dpo" / "config.json").exists() or (tmp_path / "dpo" / "adapter_config.json").exists()
    steps = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    first = next(m for m in steps if "loss" in m)
    # step 1: policy == reference, so the soft-label sigmoid loss is ln 2 whatever label_prob is
    assert first["loss"] == pytest.approx(0.693147, abs=1e-3)
    print(json.dumps({"revise": summary, "label": lab, "dpo": steps}, indent=1))  # figures, shown with -s


def test_cai_infer_cli_shows_every_step(tiny_model_dir):
    out = _invoke(["cai", "infer", str(tiny_model_dir), "-p", "Tell me about the sea.", "--show-steps",
                   "--rounds", "2", "--fewshot", "0", "--max-new-tokens", "6"])
    labels = re.findall(r"\[(?:draft|final|critique: [\w-]+|revision \d)\]\n", out)
    labels = [x.strip() for x in labels]
    assert labels[0] == "[draft]" and labels[-1] == "[final]"
    assert sum(x.startswith("[critique: ") for x in labels) == 2 and "[revision 2]" in labels
