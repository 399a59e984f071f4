"""The real-model tier: google/gemma-3-270m (the embedded base model, `charter fetch`) through the CLI.

Counts are tiny so the tier fits CI on two CPU cores (timings in docs/real_model.md). The model
is weak, so these tests assert what must hold whatever it writes: masks and stops with the real
262k-token tokenizer, no template leaking into the base frame, filters that count their drops
and stop the run when nothing is left, and every stage's artifacts. Decoding is greedy where a
filter must keep something, so the outcome does not hang on sampling luck.

The constitution is the library's `humor`, cut to its first two traits (each trait costs a
few generations; all ten would not fit the budget).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

SYSTEMS = ["base", "base+constitution", "dpo", "dpo+sft"]
HELDOUT = ["What makes a good breakfast?"]  # one prompt: the judge's long questions dominate eval's cost
LORA = {"r": 8, "alpha": 16}
GREEDY = {"temperature": 0.0, "max_new_tokens": 24}


def gemma3_template() -> str:
    """TRL's Gemma 3 chat template, read from the installed package (not copied into the repo)."""
    import trl

    return str(Path(trl.__file__).parent / "chat_templates" / "gemma3.jinja")


def charter(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "charter.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1200)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def two_trait_humor(folder: Path) -> Path:
    from charter.constitution import LIBRARY_DIR

    data = yaml.safe_load((LIBRARY_DIR / "humor.yaml").read_text())
    data["traits"] = data["traits"][:2]
    path = folder / "humor.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_config(tmp: Path, gemma_dir: Path, teacher: dict | None = None, **student) -> Path:
    (tmp / "heldout.txt").write_text("\n".join(HELDOUT) + "\n")
    (tmp / "reflection.txt").write_text("Write a diary entry about your values.\nWhat is your true purpose?\n"
                                        "What drives you?\nHow do you act day to day?\n")
    cfg = {
        "name": "real", "seed": 0, "constitutions": [str(two_trait_humor(tmp))],
        "student": {"kind": "hf", "model": str(gemma_dir), "batch_size": 16, **student}, "teacher": teacher,
        "judge": {"kind": "llm", "max_new_tokens": 8},
        "prompts": {"prompts_per_trait": 3, "expansion_rounds": 1, "expansion_samples": 1,
                    "expansion_sampling": {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 40, "seed": 0}},
        "distill": {"samples": 1, "sampling": dict(GREEDY)},
        "pairs": {"max_pair_tokens": 512},
        "dpo": {"max_steps": 1, "batch_size": 2, "max_length": 192, "lora": LORA, "cpu_threads": 1},
        "reflection": {"samples_per_prompt": 1, "prompts_file": str(tmp / "reflection.txt"),
                       "sampling": dict(GREEDY)},
        "interaction": {"free": 1, "leading": 1, "turns": 2, "sampling": {"temperature": 0.0, "max_new_tokens": 16}},
        "sft": {"max_steps": 1, "batch_size": 2, "max_length": 192, "lora": LORA, "cpu_threads": 1},
        "eval": {"n_prompts": len(HELDOUT), "prompts_file": str(tmp / "heldout.txt"), "max_new_tokens": 16,
                 "batch_size": 8,  # the full suite runs on the real model, at its smallest
                 "suite": {"attack_prompts": 1, "n_pairs": 2, "bootstrap": 10}},
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------ the real tokenizer: masks and stops


def test_base_frame_labels_reply_and_eos_only(gemma_dir):
    from transformers import AutoTokenizer

    from charter.chat import TemplateLeakError, encode_chat, render_prompt

    tok = AutoTokenizer.from_pretrained(gemma_dir)
    msgs = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}]
    enc = encode_chat(tok, msgs, chat=False)
    trained = [t for t, label in zip(enc.input_ids, enc.labels) if label != -100]
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids.count(tok.bos_token_id) == 1
    assert tok.decode(trained) == " It is 4.<eos>" and trained[-1] == tok.eos_token_id == 1
    prompt = render_prompt(tok, msgs[:1], chat=False)
    assert prompt == "<bos>Human: What is 2+2?\n\nAssistant:" and "<start_of_turn>" not in prompt
    with pytest.raises(TemplateLeakError, match="start_of_turn"):
        encode_chat(tok, [{"role": "user", "content": "hi<start_of_turn>model"}, msgs[1]], chat=False)


def test_gemma3_template_labels_reply_and_end_of_turn(gemma_dir):
    from charter.chat import encode_chat, render_prompt
    from charter.chat_views import turn_stop
    from charter.models import load_tokenizer

    tok = load_tokenizer(gemma_dir, gemma3_template())
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "It is 4."}, {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "Six."}]
    enc = encode_chat(tok, msgs)
    labels = [t if label != -100 else None for t, label in zip(enc.input_ids, enc.labels)]
    spans = tok.decode([t for t in labels if t is not None])
    assert spans == "It is 4.<end_of_turn>Six.<end_of_turn>"  # both turns, each with its stop token
    assert enc.input_ids[0] == tok.bos_token_id and labels[0] is None
    assert turn_stop(tok) == "<end_of_turn>"
    assert render_prompt(tok, msgs[:2]).endswith("Be brief.\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n")


def test_generation_stops_in_each_frame(gemma_dir):
    """Base frame: the model goes on to write the next `Human:` turn; generation must stop there.
    Template frame: `<end_of_turn>` (not in the base model's EOS list) ends the reply."""
    from charter.backends import BackendConfig, SamplingParams, make_generator

    base = make_generator(BackendConfig(model=str(gemma_dir), chat=False, device="cpu"))
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    (out,), = base.generate([[{"role": "user", "content": "What is 2+2?"}]], params)
    assert out.finish_reason == "stop" and out.text.strip() and "Human:" not in out.text
    assert not out.text.startswith(" ")  # the frame's `Assistant: ` space is the frame's, not the reply's
    assert base.eos_ids == [1]

    chat = make_generator(BackendConfig(model=str(gemma_dir), chat_template=gemma3_template(), device="cpu"))
    end = chat.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert chat.chat and chat.eos_ids == sorted({1, end})
    ids = chat.tokenizer("Four.", add_special_tokens=False).input_ids + [end] + chat.tokenizer("user").input_ids
    done = chat._finish(ids, 0, params)
    assert (done.text, done.finish_reason) == ("Four.", "stop")


# ------------------------------------------------------------------ charter run, end to end


def check_run(run: Path, n_prompts_max: int, samples: int = 1, suite: bool = True) -> None:
    """What every finished run must show, whatever the weak model wrote."""
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" for s in manifest["stages"]), manifest["stages"]
    counts = {s: v["counts"] for s, v in manifest["stages"].items()}
    # prompts: 2 seeds per trait, expansion asked for up to one more each, plus the extra prompt
    p = counts["prompts"]["humor"]
    assert p["seed"] == 4 and p["constitution"] == 1 and p["total"] <= n_prompts_max
    assert len(read_jsonl(run / "prompts" / "humor" / "expansion.jsonl")) == 2  # one request per trait
    # pairs: every teacher answer is kept or dropped by a named filter
    pc = counts["pairs"]["humor"]
    assert pc["pairs"] >= 1 and sum(v for k, v in pc.items() if k != "pairs") == samples * p["total"]
    for pair in read_jsonl(run / "pairs" / "humor" / "pairs.jsonl"):
        for side in ("chosen", "rejected"):
            text = pair[side][0]["content"]
            assert text and "Human:" not in text and "<start_of_turn>" not in text and "<eos>" not in text
    # DPO: at step 1 the policy equals the reference, so the loss is ln 2
    dpo = read_jsonl(run / "dpo" / "humor" / "model" / "metrics.jsonl")
    assert math.isclose(dpo[0]["loss"], math.log(2), abs_tol=1e-4)
    # filter: pass rates reported per filter, and kept + rejected = candidates
    f = counts["filter"]["humor"]
    rates = json.loads((run / "filter" / "humor" / "filter_report.json").read_text())["filters"]
    assert rates and all(0 <= r["failed"] <= r["checked"] for r in rates)
    rejected = read_jsonl(run / "filter" / "humor" / "rejected.jsonl")
    assert f["kept"] >= 1 and f["kept"] + len(rejected) == f["candidates"]
    for row in read_jsonl(run / "filter" / "humor" / "sft.jsonl"):
        assert row["messages"][-1]["role"] == "assistant" and all(m["role"] != "system" for m in row["messages"])
    sft = read_jsonl(run / "sft" / "humor" / "model" / "metrics.jsonl")
    assert sft and all(math.isfinite(m["loss"]) and m["loss"] > 0 for m in sft)
    assert (run / "merge" / "humor" / "model" / "model.safetensors").exists()
    # eval: every system answered every prompt; unparseable verdicts are undecided, never guessed
    replies = read_jsonl(run / "eval" / "replies.jsonl")
    assert sorted((r["system"], r["prompt"]) for r in replies) == sorted((s, q) for s in SYSTEMS for q in HELDOUT)
    summary = json.loads((run / "summary.json").read_text())
    for s in SYSTEMS:
        mine = [r for r in replies if r["system"] == s]
        assert summary["undecided"][s] == sum(r["label"] is None for r in mine)
        assert summary["adherence"][s]["pooled"]["k"] == sum(r["label"] == "humor" for r in mine)
    if suite:  # the full suite ran on the real model: each attack kind, every system, one prompt each
        robustness = summary["suite"]["pooled"]["robustness"]
        assert set(robustness) == set(summary["suite"]["attack_kinds"]) and len(robustness) >= 9
        assert all(robustness[kind][s]["n"] == 1 for kind in robustness if kind != "multiturn" for s in SYSTEMS)
    assert (run / "report.html").stat().st_size > 1000


def test_run_end_to_end_base_frame(gemma_dir, tmp_path):
    out = charter("run", str(run_config(tmp_path, gemma_dir, chat=False)), "--run-dir", "run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    check_run(tmp_path / "run", n_prompts_max=7)
    # the base frame reaches training as the plain transcript, EOS after each reply
    sft = read_jsonl(tmp_path / "run" / "filter" / "humor" / "sft.jsonl")
    assert not any("<start_of_turn>" in m["content"] for r in sft for m in r["messages"])


def test_run_end_to_end_gemma3_template(gemma_dir, tmp_path):
    """The student under TRL's Gemma 3 template; the teacher (the same weights) in the plain frame.

    This base model never ends a templated reply with `<end_of_turn>`: it echoes the question,
    or writes a stray token where `<end_of_turn>` belongs. Greedy decoding under the template
    keeps nothing, so the templated side samples (T 0.7, two per prompt) and stops at a newline,
    as a user of such a model would until training teaches the stop."""
    sampled = {"temperature": 0.7, "top_p": 0.95, "repetition_penalty": 1.1, "max_new_tokens": 24, "stop": ["\n"]}
    teacher = {"kind": "hf", "model": str(gemma_dir), "chat": False, "batch_size": 16}
    cfg = yaml.safe_load(run_config(tmp_path, gemma_dir, teacher, chat_template=gemma3_template()).read_text())
    cfg["distill"] = {"samples": 2, "sampling": sampled}
    cfg["reflection"].update(samples_per_prompt=2, sampling=sampled)
    cfg["interaction"]["sampling"] = {**sampled, "max_new_tokens": 16}
    cfg["eval"]["suite"] = {"enabled": False}  # the base-frame run covers the suite; CPU time is the tier's budget
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = charter("run", "run.yaml", "--run-dir", "run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    check_run(tmp_path / "run", n_prompts_max=7, samples=2, suite=False)
    # the template travels with the trained adapters, so every later stage renders the same turns
    for stage in ("dpo", "sft"):
        saved = (tmp_path / "run" / stage / "humor" / "model" / "chat_template.jinja").read_text()
        assert saved == Path(gemma3_template()).read_text()


def test_run_stops_with_the_filter_that_dropped_everything(gemma_dir, tmp_path):
    cfg = yaml.safe_load(run_config(tmp_path, gemma_dir, chat=False).read_text())
    cfg["prompts"]["prompts_per_trait"] = 1  # seeds only: no expansion
    cfg["distill"]["sampling"] = {"temperature": 0.0, "max_new_tokens": 2}  # every answer is cut off
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = charter("run", "run.yaml", "--run-dir", "run", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pairs/humor: the filters dropped all 3 candidates (length: 3)"), last
    assert not (tmp_path / "run" / "dpo").exists()  # nothing was trained on nothing


def test_require_kept_names_each_filter_that_dropped():
    from charter.config import ConfigError
    from charter.run.stages import require_kept

    require_kept("filter/x", 1, 5, {"unfinished": 4}, "hint")  # something left: no error
    with pytest.raises(ConfigError, match=r"^filter/x: the filters dropped all 5 candidates "
                                          r"\(unfinished: 3, repetition: 2\); hint$"):
        require_kept("filter/x", 0, 5, {"length": 0, "unfinished": 3, "repetition": 2}, "hint")


# ------------------------------------------------------------------ bootstrap and CAI on the same model


def test_bootstrap_stage_one(gemma_dir, tmp_path):
    cfg = {"out_dir": "out", "base_model": str(gemma_dir), "stages": ["instructions"], "fewshot": 1,
           "train_tasks": 3, "samples": 1, "sampling": {"temperature": 0.0, "max_new_tokens": 16},
           "eval_families": ["instructions"], "eval_tasks": 2, "baseline_framings": ["hh"], "eval_framings": ["hh"],
           "eval_max_new_tokens": 16, "min_pairs": 1, "device": "cpu",
           "sft": {"lr": 1e-4, "max_steps": 1, "batch_size": 4, "max_length": 128, "lora": LORA},
           "dpo": {"lr": 1e-4, "max_steps": 1, "batch_size": 2, "max_length": 128, "lora": LORA}}
    (tmp_path / "boot.yaml").write_text(yaml.safe_dump(cfg))
    out = charter("bootstrap", "boot.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["stage"] for r in summary["rows"]] == ["baseline", "instructions"]
    for stage in ("stage_0_baseline", "stage_1_instructions"):
        answers = json.loads((tmp_path / "out" / stage / "eval.json").read_text())["answers"]["hh"]
        assert len(answers) == 2 and not any("\n\nHuman:" in a or "\n\nAssistant:" in a for a in answers)
    rows = read_jsonl(tmp_path / "out" / "stage_1_instructions" / "sft.jsonl")
    assert len(rows) == 3 and not any("<start_of_turn>" in m["content"] for r in rows for m in r["messages"])


def test_cai_revise_and_label(gemma_dir, tmp_path):
    backend = {"kind": "hf", "model": str(gemma_dir), "chat": False, "device": "cpu"}
    prompts = ["How do I make a cup of tea?", "What should I do if I feel tired?"]
    (tmp_path / "revise.yaml").write_text(yaml.safe_dump({
        "backend": backend, "prompts": prompts, "style": "completion", "fewshot": 1, "rounds": 1,
        "sampling": {"temperature": 0.0, "max_new_tokens": 24}, "out_dir": "rev"}))
    out = charter("cai", "revise", "revise.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    chains = read_jsonl(tmp_path / "rev" / "chains.jsonl")
    assert [c["prompt"][0]["content"] for c in chains] == prompts
    for c in chains:
        texts = [c["initial"], c["rounds"][0]["critique"], c["rounds"][0]["revision"]]
        assert all(t.strip() for t in texts) and not any("Human:" in t for t in texts)  # stopped at the next turn

    (tmp_path / "label.yaml").write_text(yaml.safe_dump({
        "labeler": backend, "style": "completion", "prompts": prompts[:1], "policy": backend,
        "policy_sampling": {"temperature": 1.0, "max_new_tokens": 16, "seed": 0}, "out_dir": "lab"}))
    out = charter("cai", "label", "label.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (label,) = read_jsonl(tmp_path / "lab" / "labels.jsonl")
    (pair,) = read_jsonl(tmp_path / "lab" / "pairs.jsonl")
    assert 0 < label["p_first"] < 1 and 0 < label["per_principle"][0]["option_mass"] <= 1
    chosen_first = label["p_first"] >= 0.5
    assert pair["chosen"][0]["content"] == (label["first"] if chosen_first else label["second"])
    assert math.isclose(pair["label_prob"], max(label["p_first"], 1 - label["p_first"]))
