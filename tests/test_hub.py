"""Hub ids and local folders alike: training, merge, chat, the backends and `charter run` load a
model cached under a Hub id with HF_HUB_OFFLINE=1, record the id (not the cache path), and name
a model that is neither a folder nor cached in one line."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from charter.models import ModelNotFoundError, resolve_model
from talker import REPLY, build_talker

HUB_ID = "tiny-org/tiny-chat"
REVISION = "0123456789abcdef0123456789abcdef01234567"
LINES = ["the sea is blue.", "cats sleep all day.", "rain falls on the hill.", "bread is warm."]


def put_in_hub_cache(model_dir: Path, hub_cache: Path, repo_id: str) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<rev>/...}."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture(scope="module")
def hub(tiny_model_dir, tmp_path_factory):
    """(HF_HOME, snapshot folder) with the tiny model cached under HUB_ID; the process reads that
    cache offline for the module's tests."""
    from huggingface_hub import constants

    home = tmp_path_factory.mktemp("hf_home")
    snapshot = put_in_hub_cache(tiny_model_dir, home / "hub", HUB_ID)
    saved = constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(home / "hub"), True
    yield home, snapshot
    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = saved


@pytest.fixture(scope="module")
def dpo_on_hub_id(hub, tmp_path_factory):
    """`charter train dpo model=HUB_ID ...` (LoRA, one step): the output folder and its metrics."""
    from typer.testing import CliRunner

    from charter.cli import app
    from charter.data.jsonl import write_jsonl

    root = tmp_path_factory.mktemp("dpo_hub")
    write_jsonl(root / "pairs.jsonl", [{"prompt": [{"role": "user", "content": a}],
                                        "chosen": [{"role": "assistant", "content": b}],
                                        "rejected": [{"role": "assistant", "content": a}]}
                                       for a, b in zip(LINES, LINES[1:] + LINES[:1])])
    res = CliRunner().invoke(app, ["train", "dpo", f"model={HUB_ID}", f"data={root / 'pairs.jsonl'}",
                                   f"output_dir={root / 'dpo'}", "lr=3e-2", "max_steps=2", "batch_size=4",
                                   "warmup_ratio=0", "lora.r=4", "lora.alpha=8"])
    assert res.exit_code == 0, res.output
    return root / "dpo"


def test_hub_id_resolves_to_its_cached_snapshot_offline(hub):
    _, snapshot = hub
    ref = resolve_model(HUB_ID)
    assert ref.base == snapshot and ref.base_name == HUB_ID and ref.adapters == () and ref.tokenizer == snapshot


def test_missing_models_are_one_error_naming_them(hub):
    uncached = r"^tiny-org/not-cached: .*not in the Hugging Face cache.*HF_HUB_OFFLINE=1"
    with pytest.raises(ModelNotFoundError, match=uncached):
        resolve_model("tiny-org/not-cached")
    with pytest.raises(ModelNotFoundError, match=r"^/path/that/does/not/exist: no such model folder$"):
        resolve_model("/path/that/does/not/exist")


@pytest.mark.parametrize("argv, name", [
    (["chat", "/path/that/does/not/exist"], "/path/that/does/not/exist"),
    (["train", "sft", "model=tiny-org/not-cached", "data=x.jsonl", "output_dir=out"], "tiny-org/not-cached"),
    (["merge", "tiny-org/not-cached", "ADAPTER", "--out", "OUT"], "tiny-org/not-cached"),
])
def test_cli_names_a_missing_model_in_one_line(hub, dpo_on_hub_id, tmp_path, monkeypatch, capsys, argv, name):
    from charter.cli import main

    argv = [str(dpo_on_hub_id) if a == "ADAPTER" else str(tmp_path / "o") if a == "OUT" else a for a in argv]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.jsonl").write_text('{"prompt": "hi", "completion": "hello"}\n')  # only the model is missing
    monkeypatch.setattr(sys, "argv", ["charter", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {name}: "), err


def test_dpo_on_hub_id_trains_and_records_the_id(hub, dpo_on_hub_id):
    """Step 1 is ln 2 (policy = reference), and the artifacts name the Hub id, not the cache path."""
    rows = [json.loads(line) for line in (dpo_on_hub_id / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert json.loads((dpo_on_hub_id / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    assert json.loads((dpo_on_hub_id / "charter_train.json").read_text())["base_model"] == HUB_ID
    ref = resolve_model(dpo_on_hub_id)
    assert ref.base == hub[1] and ref.adapters == (dpo_on_hub_id,) and ref.base_name == HUB_ID


def test_merge_and_chat_load_an_adapter_on_a_hub_id(hub, dpo_on_hub_id, tiny_model_dir, tmp_path):
    """`charter merge HUB_ID a:1` == merging into the folder; `--export` reads the id from the
    adapter; chat's loader on the adapter folder gives the merged model's logits."""
    from typer.testing import CliRunner

    from charter.backends.hf import load_causal_lm
    from charter.cli import app
    from charter.train.lora import merge_adapters

    runner = CliRunner()
    res = runner.invoke(app, ["merge", HUB_ID, f"{dpo_on_hub_id}:1", "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["merge", "--export", str(dpo_on_hub_id), "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    merge_adapters(tiny_model_dir, [(dpo_on_hub_id, 1.0)], tmp_path / "want")
    want = load_file(str(tmp_path / "want" / "model.safetensors"))
    for got in ("m", "e"):
        w = load_file(str(tmp_path / got / "model.safetensors"))
        assert w.keys() == want.keys() and all(torch.equal(w[k], want[k]) for k in want)
        assert json.loads((tmp_path / got / "charter_merge.json").read_text())["base"] == HUB_ID
    merged, tok = load_causal_lm(str(tmp_path / "m"))
    chat_model, _ = load_causal_lm(str(dpo_on_hub_id))  # what `charter chat ADAPTER_DIR` loads
    plain, _ = load_causal_lm(HUB_ID)                   # `charter chat HUB_ID`
    ids = torch.tensor([tok("the sea is blue.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(chat_model(ids).logits, merged(ids).logits, atol=1e-5)
        assert not torch.allclose(plain(ids).logits, merged(ids).logits, atol=1e-3)
    base_weights = load_file(str(tiny_model_dir / "model.safetensors"))
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in base_weights.items())


def test_vllm_takes_a_training_output_as_base_plus_adapter(hub, dpo_on_hub_id, tmp_path):
    from charter.backends.vllm import vllm_model

    assert vllm_model(HUB_ID, None) == (HUB_ID, None)
    assert vllm_model(str(dpo_on_hub_id), None) == (str(hub[1]), str(dpo_on_hub_id))
    with_merged = tmp_path / "dpo"
    shutil.copytree(dpo_on_hub_id, with_merged)
    shutil.copytree(hub[1], with_merged / "merged")
    assert vllm_model(str(with_merged), None) == (str(with_merged / "merged"), None)


def test_dry_run_checks_every_model_before_anything_runs(hub, tmp_path):
    from typer.testing import CliRunner

    from charter.cli import app

    def dry(student: str):
        return CliRunner().invoke(app, ["run", "--preset", "quick", f"student.model={student}",
                                        f"eval.prompts_file={tmp_path / 'heldout.txt'}",
                                        "--run-dir", str(tmp_path / "run"), "--dry-run"])

    (tmp_path / "heldout.txt").write_text("What is the weather like?\n")
    ok = dry(HUB_ID)
    assert ok.exit_code == 0, ok.output
    assert HUB_ID in ok.output and "  dpo " in ok.output
    bad = dry("tiny-org/not-cached")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: tiny-org/not-cached: "), bad.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_quick_preset_runs_end_to_end_offline_on_a_hub_id(tmp_path):
    """`charter run --preset quick student.model=org/name` in a fresh process whose only copy of
    the model is the Hugging Face cache, with HF_HUB_OFFLINE=1: every stage runs (the model is both
    teacher and student, as the preset says), and every artifact names the Hub id."""
    from charter.data.jsonl import read_jsonl

    hub_id, home = "tiny-org/talker", tmp_path / "hf_home"
    put_in_hub_cache(build_talker(tmp_path / "talker"), home / "hub", hub_id)
    shutil.rmtree(tmp_path / "talker")  # no local folder left: only the cache has it
    (tmp_path / "heldout.txt").write_text("What is a star?\nHow do I cook rice?\nTell me about the sea.\n")
    run = tmp_path / "run"
    tiny = ["prompts.prompts_per_trait=1", "distill.sampling.max_new_tokens=16", "reflection.samples_per_prompt=1",
            "reflection.sampling.max_new_tokens=16", "interaction.free=1", "interaction.leading=1",
            "interaction.turns=2", "interaction.sampling.max_new_tokens=16", "eval.n_prompts=3",
            "eval.max_new_tokens=16"]
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "charter.cli", "run", "--preset", "quick", f"student.model={hub_id}",
                           f"eval.prompts_file={tmp_path / 'heldout.txt'}", *tiny, "--run-dir", str(run)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values()), manifest["stages"]
    prompts = read_jsonl(run / "prompts" / "sarcasm" / "prompts.jsonl")
    pairs = read_jsonl(run / "pairs" / "sarcasm" / "pairs.jsonl")
    assert len(pairs) == len(prompts) >= 10  # a seed per trait (+ extras), one sample each; all pairs kept
    assert {p["meta"]["teacher"] for p in pairs} == {p["meta"]["student"] for p in pairs} == {hub_id}
    dpo, sft = run / "dpo" / "sarcasm" / "model", run / "sft" / "sarcasm" / "model"
    assert json.loads((dpo / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_id
    assert json.loads((sft / "charter_train.json").read_text())["base_model"] == hub_id
    record = json.loads((sft / "charter_train.json").read_text())
    # the SFT folder's adapter folds DPO in (self-contained on the Hub id); its own delta is kept apart
    assert record["base_adapters"] == [] and record["trained_on"] == [str(dpo)]
    assert json.loads((sft / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_id
    assert json.loads((run / "merge" / "sarcasm" / "model" / "charter_merge.json").read_text())["base"] == hub_id
    replies = read_jsonl(run / "eval" / "replies.jsonl")
    assert len(replies) == 4 * 3 and {r["reply"] for r in replies} == {REPLY}
    assert (run / "report.html").exists()


def test_peft_adapter_on_another_adapter_folder_resolves_the_whole_chain(hub, dpo_on_hub_id, tmp_path):
    """A plain PEFT adapter (no Charter record) whose base is an adapter folder on a Hub id: the
    chain is base <- dpo <- this one, and the file layout of the chain is read without the base."""
    from charter.models import adapter_chain

    outer = tmp_path / "outer"
    shutil.copytree(dpo_on_hub_id, outer, ignore=shutil.ignore_patterns("charter_train.json", "merged"))
    cfg = json.loads((outer / "adapter_config.json").read_text())
    (outer / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(dpo_on_hub_id)}))
    assert adapter_chain(outer) == (HUB_ID, (dpo_on_hub_id, outer))
    ref = resolve_model(outer)
    assert ref.base == hub[1] and ref.adapters == (dpo_on_hub_id, outer) and ref.base_name == HUB_ID
    with pytest.raises(ModelNotFoundError, match="a file, not a model folder"):
        resolve_model(outer / "adapter_config.json")


def test_a_broken_adapter_config_is_one_line(tmp_path):
    """`adapter_config.json` has one reader (`charter.models.read_adapter_config`); a file that is not
    JSON is a ConfigError naming it and the line, wherever the folder is resolved from."""
    from charter.config import ConfigError
    from charter.models import ADAPTER_CONFIG, resolve_model

    (tmp_path / ADAPTER_CONFIG).write_text('{"base_model_name_or_path": "x",\n oops}')
    with pytest.raises(ConfigError, match=rf"^{tmp_path / ADAPTER_CONFIG}: line 2: not valid JSON"):
        resolve_model(tmp_path)
