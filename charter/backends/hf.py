"""Local transformers generation: batched, left-padded, KV-cached, with stop strings.

This is the embedded default backend. Requests are expanded to `n` rows, sorted by
prompt length (so a batch wastes little padding), generated `batch_size` rows at a time
with `model.generate`, and returned in the original order. Left padding keeps every
row's last prompt token at the right edge, where generation starts; position ids come
from the attention mask, so batched greedy output equals per-prompt greedy output.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, GenerationConfig, StoppingCriteria, StoppingCriteriaList

from charter.backends.base import (Completion, GenerationRequest, RequestLike, SamplingParams, as_request,
                                   with_frame_stops)
from charter.chat import frame_reply, has_chat_template, render_prompt
from charter.chat_views import turn_stop
from charter.models import (MERGE_RECORD, adapter_chain, has_tokenizer, load_tokenizer, local_folder, merged_state,
                            resolve_model)


def _stop_index(text: str, stops: list[str]) -> int:
    """Index of the earliest stop string in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


class StopStrings(StoppingCriteria):
    """Per-row stopping once the decoded tail of the completion contains a stop string."""

    def __init__(self, tokenizer: Any, stops: list[str], prompt_len: int):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, stops, prompt_len
        self.window = max(len(s) for s in stops) + 8  # tokens: each decodes to >= 1 char, with margin for byte pieces

    def __call__(self, input_ids, scores, **kwargs):
        start = max(self.prompt_len, input_ids.shape[1] - self.window)
        tails = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        return torch.tensor([_stop_index(t, self.stops) >= 0 for t in tails], device=input_ids.device)


def _merged_into(model_dir: Path) -> set[Path]:
    """Adapters already folded into a `merge_adapters` output folder (none for a plain model)."""
    record = model_dir / MERGE_RECORD
    if not record.exists():
        return set()
    return {Path(a["path"]).resolve() for a in json.loads(record.read_text())["adapters"]}


def apply_adapters(model: Any, adapters: list[Path]) -> Any:
    """Fold LoRA adapters into `model`, oldest first: the earlier ones exactly (`merged_state`),
    the last through PEFT (which also handles adapter kinds that are not a plain sum of deltas)."""
    if not adapters:
        return model
    if adapters[:-1]:
        merged_state(model, [(a, 1.0) for a in adapters[:-1]])
    return PeftModel.from_pretrained(model, str(adapters[-1])).merge_and_unload()


def weights_and_adapters(path: str, adapter: str | None = None) -> tuple[Path, list[Path], Path]:
    """(folder to load weights from, adapters to fold in, tokenizer folder) for a model folder or
    Hub id, or an adapter folder (its whole chain: an SFT adapter trained on DPO brings DPO),
    plus an optional `adapter` on top (its chain minus adapters already merged into the model)."""
    ref = resolve_model(path)
    folder, fold = (ref.merged, []) if ref.merged else (ref.base, list(ref.adapters))
    tokenizer = ref.tokenizer
    if adapter:
        extra = adapter_chain(local_folder(adapter))[1]
        done = _merged_into(folder) | {a.resolve() for a in ref.adapters}
        fold += [a for a in extra if a.resolve() not in done]
        tokenizer = extra[-1] if has_tokenizer(extra[-1]) else tokenizer
    return folder, fold, tokenizer


def load_causal_lm(path: str, adapter: str | None = None, dtype: str | None = None,
                   tokenizer: Any = None, chat_template: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for a model folder, Hub id (from the Hugging Face cache when offline) or
    adapter folder, optionally with `adapter` merged in. The tokenizer comes from the adapter
    folder when it ships one (training may add tokens), else from the model; `chat_template`
    (a Jinja file) replaces its template."""
    folder, adapters, tok_src = weights_and_adapters(path, adapter)
    if tokenizer is None:
        tokenizer = load_tokenizer(tok_src, chat_template)
    torch_dtype = getattr(torch, dtype) if dtype and dtype != "auto" else "auto"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, use_safetensors=True)
    return apply_adapters(model, adapters), tokenizer


def end_ids(model: Any, tokenizer: Any, chat: bool) -> list[int]:
    """Token ids that end a reply: the generation config's EOS, the tokenizer's, and with a chat
    template the first token of its end-of-turn run (a template given to a base model, such as
    Gemma 3's `<end_of_turn>`, is not in the model's own EOS list)."""
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if tokenizer.eos_token_id is not None:
        eos.append(tokenizer.eos_token_id)
    stop = turn_stop(tokenizer, True) if chat else ""
    if stop.strip():
        eos.append(tokenizer(stop, add_special_tokens=False)["input_ids"][0])
    return sorted(set(eos))


def prompt_token_ids(tokenizer: Any, req: GenerationRequest, chat: bool) -> list[int]:
    """The ids generation starts from. Chat requests use the chat template (or the base-model
    frame); raw prompts are tokenized as-is."""
    if req.messages is not None:
        # chat=False: a base model gets the plain transcript even if its tokenizer ships a template
        text = render_prompt(tokenizer, req.messages, chat=chat) + req.prefill
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(req.prompt + req.prefill, add_special_tokens=True)["input_ids"]


def _stop_token_end(tokenizer: Any, toks: list[int], stops: list[str]) -> int:
    """How many of `toks` it takes for their text to contain a stop string: the reply's tokens
    through the one that completed it (binary search: the text only grows with the tokens)."""
    lo, hi = 1, len(toks)
    while lo < hi:
        mid = (lo + hi) // 2
        if _stop_index(tokenizer.decode(toks[:mid], skip_special_tokens=True), stops) >= 0:
            hi = mid
        else:
            lo = mid + 1
    return lo


class HFGenerator:
    """`Generator` over a local transformers causal LM, optionally with a LoRA adapter."""

    def __init__(self, model: Any, tokenizer: Any = None, adapter: str | None = None,
                 batch_size: int = 32, device: str | None = None, dtype: str | None = None,
                 chat: bool | None = None, chat_template: str | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if isinstance(model, str):
            self.name = model
            model, tokenizer = load_causal_lm(model, adapter, dtype, tokenizer, chat_template)
        else:
            self.name = getattr(model.config, "_name_or_path", "") or type(model).__name__
            if tokenizer is None:
                raise ValueError("HFGenerator: pass the tokenizer along with an in-memory model")
            if adapter:
                model = apply_adapters(model, list(adapter_chain(local_folder(adapter))[1]))
        if adapter:
            self.name = f"{self.name}+{adapter}"
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.chat = has_chat_template(tokenizer) if chat is None else chat
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = end_ids(model, tokenizer, self.chat)

    # ------------------------------------------------------------------ prompts

    def prompt_ids(self, req: GenerationRequest) -> list[int]:
        return prompt_token_ids(self.tokenizer, req, self.chat)

    # ------------------------------------------------------------------ generation

    def generate(self, requests: list[RequestLike], params: SamplingParams,
                 progress: bool = False) -> list[list[Completion]]:
        reqs = [as_request(r) for r in requests]
        framed = [not self.chat and r.messages is not None for r in reqs]  # the plain frame of a base model
        if any(framed):
            params = with_frame_stops(params)
        ids = [self.prompt_ids(r) for r in reqs]
        rows = [(i, k) for i in range(len(reqs)) for k in range(params.n)]
        rows.sort(key=lambda r: -len(ids[r[0]]))  # similar lengths together: less padding
        out: list[list[Completion | None]] = [[None] * params.n for _ in reqs]
        batches = [rows[s:s + self.batch_size] for s in range(0, len(rows), self.batch_size)]
        for b, batch in enumerate(tqdm(batches, desc=f"generate {self.name}", disable=not progress)):
            if params.seed is not None:
                torch.manual_seed(params.seed + b)
            comps = self._generate_batch([ids[i] for i, _ in batch], params)
            for (i, k), c in zip(batch, comps):
                if framed[i] and not reqs[i].prefill:
                    c.text = frame_reply(c.text)
                out[i][k] = c
        return out  # type: ignore[return-value]

    def _generate_batch(self, batch_ids: list[list[int]], params: SamplingParams) -> list[Completion]:
        width = max(len(x) for x in batch_ids)
        input_ids = torch.full((len(batch_ids), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch_ids), width), dtype=torch.long)
        for r, x in enumerate(batch_ids):  # left padding
            input_ids[r, width - len(x):] = torch.tensor(x, dtype=torch.long)
            attention[r, width - len(x):] = 1
        sample = params.temperature > 0
        gen_cfg = GenerationConfig(
            max_new_tokens=params.max_new_tokens, do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None, top_k=params.top_k if sample else None,
            repetition_penalty=params.repetition_penalty, eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id, use_cache=True,
        )
        criteria = StoppingCriteriaList([StopStrings(self.tokenizer, params.stop, width)] if params.stop else [])
        with torch.no_grad():
            seqs = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                                       generation_config=gen_cfg, stopping_criteria=criteria)
        new = seqs[:, width:].tolist()
        return [self._finish(toks, len(x), params) for toks, x in zip(new, batch_ids)]

    def _finish(self, toks: list[int], prompt_len: int, params: SamplingParams) -> Completion:
        """Cut at EOS or the first stop string; a row that filled the budget otherwise is 'length'.
        `token_ids` keep the sampled tokens through the one that ended the reply (the EOS, or the
        token that completed the stop string), so training can score exactly what was sampled.

        Rows that stopped early (stop string) are right-padded by `generate`; the stop
        criterion halts on the token that completes the stop string, so the unpadded
        length is the completion's token count.
        """
        eos_at = next((j for j, t in enumerate(toks) if t in self.eos_ids), None)
        body = toks[:eos_at] if eos_at is not None else toks
        n = len(body)
        while eos_at is None and n and body[n - 1] == self.pad_id:
            n -= 1
        text = self.tokenizer.decode(body[:n], skip_special_tokens=True)
        cut = _stop_index(text, params.stop) if params.stop else -1
        if cut >= 0:
            ids = body[:_stop_token_end(self.tokenizer, body[:n], params.stop)]
            return Completion(text[:cut], "stop", prompt_len, n, token_ids=ids)
        if eos_at is not None:
            return Completion(text, "stop", prompt_len, eos_at + 1, token_ids=toks[:eos_at + 1])
        return Completion(text, "length" if n >= params.max_new_tokens else "stop", prompt_len, n,
                          token_ids=body[:n])
