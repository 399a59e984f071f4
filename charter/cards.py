"""Model and dataset cards: a merged model's README.md says what character it holds, how it was
made and how it scored, so the folder (or its Hub repo) explains itself.

Cards are built with huggingface_hub's `ModelCard`/`DatasetCard` and their `*CardData`, so the
YAML front matter is what the Hub parses (`base_model`, `library_name`, `tags`, `license`,
`datasets`, `model-index`). Everything in them is read from files Charter already writes: a
merge's `charter_merge.json`, each training stage's `charter_train.json`, `{kind}_config.yaml`
and `metrics.jsonl`, the first row of its data (the provenance `meta` of Charter pairs), and for
`charter run` the run's `manifest.json` and `summary.json`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData, try_to_load_from_cache

from charter.models import is_hub_id

CARD = "README.md"
TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ body }}\n"
HYPERPARAMETERS = ("lr", "epochs", "max_steps", "batch_size", "grad_accum", "max_length", "warmup_ratio",
                   "min_lr_ratio", "adam_betas", "beta", "loss_type", "nll_coef", "kl_coef", "precision", "seed")
SYSTEM_NAMES = {"base": "base model", "base+constitution": "base + constitution in the prompt (ceiling)",
                "dpo": "{method}", "dpo+sft": "{method} + SFT, merged (this model)"}  # method: the first training's


# ---------------------------------------------------------------- reading what Charter wrote

def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def base_metadata(base: str) -> dict[str, Any]:
    """`base_model` (a Hub id: the base itself, or the one a local base's card names) and its `license`."""
    local = Path(base)
    if local.is_dir():
        readme = local / CARD
    else:
        cached = try_to_load_from_cache(base, CARD) if is_hub_id(base) else None
        readme = Path(cached) if isinstance(cached, str) else None
    has_meta = readme is not None and readme.is_file() and readme.read_text(encoding="utf-8").startswith("---")
    data = ModelCard.load(readme).data.to_dict() if has_meta else {}
    hub_id = base if not local.is_dir() and is_hub_id(base) else data.get("base_model")
    return {"base_model": hub_id, "license": data.get("license")}


def base_name(base: str) -> str:
    """How the card names the base: as the user gave it, except the toy world's cached base model,
    whose cache path says nothing to a reader (and would put their home folder in the card)."""
    build = _json(Path(base) / "toy_build.json")
    if build is None:
        return f"`{base}`"
    return f"the toy world's base model (`charter toy build`, weights sha256 `{build['weights_sha256'][:16]}`)"


def _first_row(path: str | None) -> dict:
    if not path or not Path(path).is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        line = f.readline()
    try:
        return json.loads(line) if line.strip() else {}
    except json.JSONDecodeError:
        return {}


def _count_rows(path: str | None) -> int | None:
    if not path or not Path(path).is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def training_stage(folder: str | Path, weight: float) -> dict[str, Any]:
    """What a trained stage's folder records: kind, steps, hyperparameters, data, constitution, final metrics."""
    folder = Path(folder)
    record = _json(folder / "charter_train.json") or {}
    kind = record.get("kind") or next((k for k in ("dpo", "sft") if (folder / f"{k}_config.yaml").is_file()), None)
    cfg_file = folder / f"{kind}_config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text()) if kind and cfg_file.is_file() else {}
    lora = cfg.get("lora")
    metrics = (folder / "metrics.jsonl").read_text().splitlines() if (folder / "metrics.jsonl").is_file() else []
    meta = _first_row(cfg.get("data")).get("meta") or {}
    return {"path": str(folder), "kind": kind or "unknown", "weight": weight, "steps": record.get("steps"),
            "rows": _count_rows(cfg.get("data")), "data": cfg.get("data"),
            "hyperparameters": {k: cfg[k] for k in HYPERPARAMETERS if k in cfg},
            "lora": {k: lora.get(k) for k in ("r", "alpha", "dropout")} if isinstance(lora, dict) else None,
            "final": json.loads(metrics[-1]) if metrics else {},
            "constitution": {k: meta[k] for k in ("constitution", "constitution_hash") if k in meta}}


# ---------------------------------------------------------------- markdown sections

def share_value(p: dict | None) -> tuple[float, float, float] | None:
    """(value, lo, hi) of a summary share: `{k, n, value, lo, hi}`, or `{rate, ci}` in summaries before 2026-11-29."""
    if not p or p.get("value", p.get("rate")) is None or not p.get("n"):
        return None
    lo, hi = (p["lo"], p["hi"]) if "lo" in p else p["ci"]
    return p.get("value", p.get("rate")), lo, hi


def _ci(p: dict | None) -> str:
    v = share_value(p)
    return "n/a" if v is None else f"{v[0]:.3f} [{v[1]:.2f}, {v[2]:.2f}] (n={p['n']})"


def constitution_section(constitution, stages: list[dict]) -> list[str]:
    if constitution is not None:
        lines = ["## Constitution", "", f"**{constitution.name}** (hash `{constitution.hash()}`)"]
        lines += ["", constitution.description] if constitution.description else []
        traits = [f"{i}. {t.text}" for i, t in enumerate(constitution.traits, 1)]
        return lines + ["", "Traits, as trained:", ""] + traits
    named = [s["constitution"] for s in stages if s["constitution"]]
    if not named:
        return []
    c = named[0]
    return ["## Constitution", "", f"**{c.get('constitution', '?')}** (hash `{c.get('constitution_hash', '?')}`), "
            "as recorded in the training data."]


def stages_section(stages: list[dict], counts: dict[str, Any] | None = None) -> list[str]:
    lines = ["## How it was made", "", "`W = W_base + sum_i weight_i * delta_i`, summed exactly in float64, over:", "",
             "| stage | weight | steps | rows | hyperparameters | final metrics |", "|---|---|---|---|---|---|"]
    for s in stages:
        hp = ", ".join(f"{k}={v}" for k, v in s["hyperparameters"].items())
        if s["lora"]:
            hp += ", LoRA " + ", ".join(f"{k}={v}" for k, v in s["lora"].items())
        final = ", ".join(f"{k}={v:.4g}" for k, v in s["final"].items()
                          if k in ("loss", "rewards/accuracies", "rewards/margins") and isinstance(v, (int, float)))
        steps, rows = ("-" if s[k] is None else s[k] for k in ("steps", "rows"))
        lines.append(f"| {s['kind']} | {s['weight']:g} | {steps} | {rows} | {hp} | {final} |")
    if counts:
        lines += ["", "Pipeline stages and their counts for this character:", ""]
        numbers = {stage: {k: v for k, v in c.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                   for stage, c in counts.items() if isinstance(c, dict)}
        lines += [f"- **{stage}**: " + ", ".join(f"{k}={v}" for k, v in c.items()) for stage, c in numbers.items() if c]
    return lines


def eval_section(summary: dict, persona: str) -> list[str]:
    """Adherence (no constitution in the prompt) for this character per system, with Wilson 95% CIs."""
    lines = ["## Evaluation", "", f"Share of replies the judge labels as **{persona}**, with no constitution in the "
             "prompt, on held-out prompts (Wilson 95% intervals):", "",
             "| system | adherence | well-formed (all personas) | on topic (all personas) |", "|---|---|---|---|"]
    for s in summary.get("systems", []):
        per = summary["adherence"][s]["per_persona"].get(persona)
        title = SYSTEM_NAMES.get(s, s).replace("{method}", str(summary.get("method") or "dpo").upper())
        lines.append(f"| {title} | {_ci(per)} | {_ci(summary['well_formed'].get(s))} "
                     f"| {_ci(summary['relevant'].get(s))} |")
    held = summary.get("heldout") or {}
    if "overlap" in held:
        lines += ["", f"Eval prompts also seen in training: {held['overlap']}."]
    return lines


# ---------------------------------------------------------------- the cards

def build_model_card(base: str, stages: list[dict], constitution=None, summary: dict | None = None,
                     persona: str | None = None, counts: dict | None = None, datasets: list[str] | None = None):
    """A `ModelCard` for a merged model: front matter from `ModelCardData`, body from the sections above."""
    meta = base_metadata(base)
    recorded = next((s["constitution"].get("constitution") for s in stages if s["constitution"]), None)
    name = persona or (constitution.name if constitution is not None else recorded) or "Charter model"
    tags = ["charter", "character-training", "constitution"] + sorted({s["kind"] for s in stages} - {"unknown"})
    results, per = None, None
    if summary and persona and "dpo+sft" in summary.get("adherence", {}):
        per = summary["adherence"]["dpo+sft"]["per_persona"].get(persona)
    if (value := share_value(per)) is not None:
        results = [EvalResult(task_type="text-generation", dataset_type="charter-heldout-prompts",
                              dataset_name="held-out prompts", metric_type="adherence", metric_value=value[0],
                              metric_name=f"adherence to {persona} (no constitution in the prompt)")]
    data = ModelCardData(base_model=meta["base_model"], library_name="transformers", license=meta["license"],
                         tags=tags, datasets=datasets or None, eval_results=results,
                         model_name=f"charter-{name}" if results else None, pipeline_tag="text-generation")
    body = [f"# {name}", "", f"A character-trained model made with Charter from {base_name(base)}: a plain transformers "
            "folder (`AutoModelForCausalLM.from_pretrained(FOLDER)`); talk to it with `charter chat FOLDER`.", ""]
    for section in (constitution_section(constitution, stages), stages_section(stages, counts),
                    eval_section(summary, persona) if summary and persona else []):
        body += section + [""] if section else []
    return ModelCard.from_template(data, template_str=TEMPLATE, body="\n".join(body).rstrip())


def write_merge_card(folder: Path, record: dict, constitution=None, summary: dict | None = None,
                     persona: str | None = None, counts: dict | None = None) -> Path:
    """README.md for a folder `save_merged` wrote, from its merge record."""
    stages = record.get("stages") or record.get("adapters") or []
    card = build_model_card(record["base"], [training_stage(s["path"], s["weight"]) for s in stages],
                            constitution, summary, persona, counts)
    card.save(folder / CARD)
    return folder / CARD


def write_run_cards(run_dir: str | Path, summary: dict, models: dict[str, tuple[Any, str | Path]]) -> list[Path]:
    """`charter run`: rewrite each persona's merged model card with the run's counts and figures.
    `models`: persona -> (its constitution, its merged model folder)."""
    manifest = _json(Path(run_dir) / "manifest.json") or {}
    out = []
    for persona, (constitution, model) in models.items():
        model = Path(model)
        record = _json(model / "charter_merge.json")
        if record is None:
            continue
        stage_counts = {name: rec.get("counts") or {} for name, rec in manifest.get("stages", {}).items()}
        counts = {name: c[persona] for name, c in stage_counts.items() if isinstance(c.get(persona), dict)}
        out.append(write_merge_card(model, record, constitution, summary, persona, counts))
    return out


def write_dataset_card(out_file: Path, fmt: str, rows: int, source: str | Path, skipped: int = 0) -> Path | None:
    """README.md beside an exported dataset file; an existing README that Charter did not write is kept."""
    path = out_file.parent / CARD
    if path.exists() and "charter" not in (DatasetCard.load(path).data.to_dict().get("tags") or []):
        return None
    meta = _first_row(str(out_file)).get("meta") or _first_row(str(source)).get("meta") or {}
    size = "n<1K" if rows < 1000 else "1K<n<10K" if rows < 10_000 else "10K<n<100K" if rows < 100_000 else "n>100K"
    data = DatasetCardData(tags=["charter", fmt], task_categories=["text-generation"], size_categories=size,
                           configs=[{"config_name": "default", "data_files": out_file.name}])
    body = [f"# {out_file.stem}", "", f"{rows} rows in the `{fmt}` format, exported by `charter data export` "
            f"from `{Path(source).name}`" + (f" ({skipped} rows skipped as invalid)." if skipped else "."), ""]
    keys = ("constitution", "constitution_hash", "teacher", "student", "source")
    provenance = {k: meta[k] for k in keys if k in meta}
    if provenance:
        body += ["Provenance of the first row:", ""] + [f"- {k}: `{v}`" for k, v in provenance.items()]
    card = DatasetCard.from_template(data, template_str=TEMPLATE, body="\n".join(body).rstrip())
    card.save(path)
    return path
