"""Model references: a local folder, a Hugging Face Hub id, or a LoRA adapter folder on either.

The one place that answers "what does loading this name take?": a local folder with the base
weights plus the LoRA adapters to fold into it, oldest first, and how they fold in exactly
(`merged_state`: base + sum of weighted `scale * B @ A` deltas, in float64). A Hub id becomes its snapshot in
the Hugging Face cache through `huggingface_hub.snapshot_download`, so `HF_HUB_OFFLINE=1` works
whenever the model is cached, and a model that is neither cached nor reachable is one clear
error naming it. Artifacts keep recording names as given (a Hub id stays a Hub id, so adapter
configs and run records stay portable); a name becomes a path only here, when it is loaded.
Training, the backends, merging and vLLM all ask here (`resolve_model`, `adapter_chain`,
`is_adapter`, `read_adapter_config`, `merged_state`); resumable training state is the other sense of "checkpoint" (`charter.train.checkpoint`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator

from charter.config import ConfigError

# Configs import this module (`ChatTemplateFile`), so huggingface_hub's Hub client (~0.15 s),
# transformers and torch are imported inside the functions that use them ("deferred: start-up"):
# reading a config never loads them.
if TYPE_CHECKING:
    import torch

TRAIN_RECORD = "charter_train.json"  # written by training: its base and the adapters folded in first
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGE_RECORD = "charter_merge.json"  # written by `charter merge`: the base and the adapters folded in
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# what loading needs from a Hub repo: configs, tokenizer files and safetensors weights (no .bin, .gguf, ...)
CONFIG_FILES = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
MODEL_FILES = CONFIG_FILES + ["*.safetensors"]


class ModelNotFoundError(ConfigError):
    """A model name that is not a folder here, nor a cached or reachable Hub model."""


@dataclass(frozen=True)
class ResolvedModel:
    base_name: str                  # the base as named (Hub id or folder): what artifacts record
    base: Path                      # its local folder (for a Hub id, the cache snapshot)
    adapters: tuple[Path, ...]      # LoRA adapters to fold into the base, oldest first
    tokenizer: Path                 # the outermost folder that ships a tokenizer
    merged: Path | None = None      # a training output's saved copy of base + adapters, when written


def is_adapter(folder: str | Path) -> bool:
    """A PEFT LoRA adapter folder (its base named inside), as opposed to full model weights."""
    return (Path(folder) / ADAPTER_CONFIG).exists()


def read_adapter_config(adapter_dir: str | Path, weights: bool = True) -> dict:
    """The adapter's `adapter_config.json` (the one reader of that file), after checking the folder
    really is a saved PEFT adapter; `weights=False` for a check that fetched configs only."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise FileNotFoundError(f"{adapter_dir}: no such adapter folder")
    missing = [f for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)[:2 if weights else 1] if not (adapter_dir / f).exists()]
    if missing:
        raise FileNotFoundError(f"{adapter_dir}: not a PEFT adapter folder (missing {', '.join(missing)})")
    try:
        return json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{adapter_dir / ADAPTER_CONFIG}: line {e.lineno}: not valid JSON ({e.msg})") from None


def has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in TOKENIZER_FILES)


def is_hub_id(name: str) -> bool:
    """`org/name` or `name` as the Hub spells repo ids; paths (`/x`, `./x`, `a/b/c`) are not."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id  # deferred: start-up

    if name.startswith((".", "/", "~")) or "\\" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def local_folder(name: str | Path, files: list[str] = MODEL_FILES) -> Path:
    """A folder as given; a Hub id -> its snapshot in the Hugging Face cache, downloading only
    `files` when the Hub is allowed and reachable (HF_HUB_OFFLINE=1 reads the cache only)."""
    from huggingface_hub import snapshot_download  # deferred: start-up

    if Path(name).is_dir():
        return Path(name)
    if Path(name).exists():
        raise ModelNotFoundError(f"{name}: a file, not a model folder")
    if not is_hub_id(str(name)):
        raise ModelNotFoundError(f"{name}: no such model folder")
    try:
        return Path(snapshot_download(str(name), allow_patterns=files))
    except (OSError, ValueError) as e:  # huggingface_hub's errors all derive from these
        raise ModelNotFoundError(hub_failure(str(name), e)) from None


def hub_failure(name: str, error: Exception) -> str:
    """One line naming the model and what to do, for any failure to get it from the cache or the Hub."""
    from huggingface_hub import constants  # deferred: start-up
    from huggingface_hub.errors import (IncompleteSnapshotError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if isinstance(error, IncompleteSnapshotError):
        return f"{name}: its cached snapshot is incomplete and the Hub cannot be reached to finish it"
    if isinstance(error, LocalEntryNotFoundError):
        why = "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else "the Hugging Face Hub could not be reached"
        return (f"{name}: no such local folder, and not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
                f"while {why}; download it first (`hf download {name}`) or give a local folder")
    if isinstance(error, RepositoryNotFoundError):
        return f"{name}: no such model on the Hugging Face Hub (or it is private/gated: `hf auth login`)"
    if isinstance(error, RevisionNotFoundError):
        return f"{name}: revision not found on the Hugging Face Hub"
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"{name}: cannot get it from the Hugging Face Hub ({first})"


def recorded_base(adapter: Path) -> tuple[str, list[str]]:
    """(base name, adapters folded into that base before training, oldest first), as the adapter
    folder records them: Charter's training record, else PEFT's `base_model_name_or_path`."""
    record = adapter / TRAIN_RECORD
    if record.exists():
        info = json.loads(record.read_text())
        return info["base_model"], list(info.get("base_adapters", []))
    base = read_adapter_config(adapter, weights=False).get("base_model_name_or_path")
    if not base:
        raise ModelNotFoundError(f"{adapter / ADAPTER_CONFIG}: no base_model_name_or_path; name the base explicitly")
    return base, []


def adapter_chain(adapter: Path, files: list[str] = MODEL_FILES) -> tuple[str, tuple[Path, ...]]:
    """(base name, adapters to fold into that base, oldest first, ending with `adapter`) read from
    the adapter folders alone: the base itself is not fetched."""
    base_name, earlier = recorded_base(adapter)
    chain = tuple(local_folder(a, files) for a in earlier) + (adapter,)
    if is_adapter(base_name):  # a PEFT adapter trained on another adapter folder
        root, inner = adapter_chain(Path(base_name), files)
        return root, inner + chain
    return base_name, chain


def resolve_model(name: str | Path, files: list[str] = MODEL_FILES) -> ResolvedModel:
    """Model folder, Hub id, or adapter folder (its base read from it, recursively) -> local
    base folder + adapter chain. `files=CONFIG_FILES` fetches no weights (for checks)."""
    folder = local_folder(name, files)
    if not is_adapter(folder):
        if not (folder / "config.json").exists():
            raise ModelNotFoundError(f"{name}: not a model folder (no config.json) nor a LoRA adapter folder "
                                     f"(no {ADAPTER_CONFIG})")
        return ResolvedModel(str(name), folder, (), folder)
    base_name, chain = adapter_chain(folder, files)
    inner = resolve_model(base_name, files)  # a Hub adapter's base may itself be one
    merged = folder / "merged"
    return ResolvedModel(inner.base_name, inner.base, inner.adapters + chain,
                         folder if has_tokenizer(folder) else inner.tokenizer,
                         merged if (merged / "config.json").exists() else None)


def _template_file(path: str | None) -> str | None:
    if path is not None and not Path(path).is_file():
        raise ValueError(f"{path}: no such chat template file (expected a Jinja file, such as TRL's "
                         "trl/chat_templates/gemma3.jinja)")
    return path


# A Jinja chat template file given to a model whose tokenizer has none (a base model trained into
# a chat model). A config field of this type fails at load time when the file is missing.
ChatTemplateFile = Annotated[str | None, AfterValidator(_template_file)]


def load_tokenizer(folder: str | Path, chat_template: str | None = None):
    """The tokenizer in `folder`, with `chat_template` (a Jinja file) as its template when given.

    The one place a configured template is applied, so generation, training and the pairs'
    length filter all render the same turns; training saves the tokenizer with its model, so
    later stages that load the trained folder get the template too."""
    from transformers import AutoTokenizer  # deferred: start-up

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if chat_template is not None:
        tokenizer.chat_template = Path(_template_file(chat_template)).read_text()
    return tokenizer


def check_model(name: str) -> ResolvedModel:
    """Resolve `name` and load its config and tokenizer (no weights): what a dry run verifies."""
    from transformers import AutoConfig, AutoTokenizer  # deferred: start-up

    ref = resolve_model(name, CONFIG_FILES)
    try:
        AutoConfig.from_pretrained(ref.base)
        AutoTokenizer.from_pretrained(ref.tokenizer)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelNotFoundError(f"{name}: config or tokenizer does not load ({first})") from None
    return ref


# ---------------------------------------------------------------------------------------------
# folding adapters into a base exactly: base + sum_i w_i * scale_i * B_i @ A_i


def lora_scale(r: int, alpha: float, use_rslora: bool = False) -> float:
    """PEFT's LoRA scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / (math.sqrt(r) if use_rslora else r)


def adapter_scale(cfg: dict) -> float:
    """PEFT's scaling for a saved adapter config."""
    return lora_scale(cfg["r"], cfg["lora_alpha"], bool(cfg.get("use_rslora")))


def check_supported(cfg: dict, path: Path) -> None:
    """Refuse adapters whose effect is not a pure `scale * B @ A` on each weight."""
    problems = []
    if cfg.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type={cfg.get('peft_type')}")
    if cfg.get("use_dora"):
        problems.append("use_dora=true (DoRA rescales weights; not a sum of deltas)")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        problems.append("rank_pattern/alpha_pattern")
    if cfg.get("modules_to_save"):
        problems.append("modules_to_save")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        problems.append("trained biases")
    if problems:
        raise ValueError(f"{path / ADAPTER_CONFIG}: cannot merge exactly: {', '.join(problems)}")


def adapter_deltas(adapter_dir: str | Path) -> dict[str, "torch.Tensor"]:
    """{base parameter name: scale * B @ A} in float64, for one saved PEFT adapter folder."""
    from safetensors.torch import load_file  # deferred: start-up

    adapter_dir = Path(adapter_dir)
    cfg, w_path = read_adapter_config(adapter_dir), adapter_dir / ADAPTER_WEIGHTS
    check_supported(cfg, adapter_dir)
    scale, fan_in_fan_out = adapter_scale(cfg), bool(cfg.get("fan_in_fan_out"))
    tensors = load_file(str(w_path))
    prefix = "base_model.model."
    deltas = {}
    for key, a in tensors.items():
        for a_tag, b_tag, is_emb in ((".lora_A.weight", ".lora_B.weight", False),
                                     (".lora_embedding_A", ".lora_embedding_B", True)):
            if key.endswith(a_tag):
                module = key[: -len(a_tag)]
                b = tensors.get(module + b_tag)
                if b is None:
                    raise ValueError(f"{w_path}: {key} has no matching {b_tag}")
                delta = b.double() @ a.double()
                if is_emb or fan_in_fan_out:  # PEFT stores these transposed relative to the weight
                    delta = delta.T
                name = module[len(prefix):] if module.startswith(prefix) else module
                deltas[name + ".weight"] = scale * delta
    if not deltas:
        raise ValueError(f"{w_path}: no LoRA A/B tensors found")
    return deltas


def resolve_param_name(params: dict, name: str, where: Path) -> str:
    """Map an adapter's module path to the model's parameter name (PEFT may omit/add prefixes)."""
    if name in params:
        return name
    hits = [p for p in params if p.endswith("." + name) or name.endswith("." + p)]
    if len(hits) != 1:
        raise ValueError(f"{where}: adapter targets {name!r}, which the base model does not have "
                         f"(is this adapter for a different base?)")
    return hits[0]


def merged_state(model, adapters: list[tuple[str | Path, float]]) -> dict[str, "torch.Tensor"]:
    """Add `sum_i w_i * delta_i` to the model's weights in place; returns {param: total delta (float64)}."""
    import torch  # deferred: start-up

    params = dict(model.named_parameters())
    total: dict[str, torch.Tensor] = {}
    for path, weight in adapters:
        for name, delta in adapter_deltas(path).items():
            key = resolve_param_name(params, name, Path(path))
            if params[key].shape != delta.shape:
                raise ValueError(f"{path}: delta for {key} has shape {tuple(delta.shape)}, "
                                 f"base weight {tuple(params[key].shape)}")
            total[key] = total.get(key, 0) + float(weight) * delta
    with torch.no_grad():
        for key, delta in total.items():
            p = params[key]
            p.copy_((p.double() + delta.to(p.device)).to(p.dtype))
    return total
