"""`charter chat RUN_DIR|MODEL`: talk to any stage's model in the terminal, with streaming output.

In a run directory, `--stage` picks the model (base, dpo, sft, merge; default: the latest
finished) and `--persona` the constitution when the run trained several. `respond` is the one
function that turns a conversation into a reply; other reply strategies (e.g. constitutional
draft -> critique -> revise) plug in by replacing it (`chat_loop(..., reply_fn=...)`).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Optional

import typer

from charter.config import ConfigError
from charter.run.layout import MANIFEST, model_in_run

ReplyFn = Callable[[list[dict], Callable[[str], None]], str]  # (messages, on_text_chunk) -> full reply


def resolve_model(target: str, stage: str | None = None, persona: str | None = None) -> str:
    """A run dir -> the chosen stage's model folder (`charter.run.layout`); anything else is a model path or id."""
    if not (Path(target) / MANIFEST).exists():
        if stage or persona:
            raise ConfigError(f"{target}: --stage/--persona need a run directory (no manifest.json there)")
        return target
    return model_in_run(target, stage, persona)


def respond(model, tokenizer, messages: list[dict], on_text: Callable[[str], None],
            max_new_tokens: int = 256, temperature: float = 0.7, top_p: float = 0.95) -> str:
    """Generate one reply, streaming text chunks to `on_text` as they are decoded."""
    import torch
    from transformers import TextIteratorStreamer

    from charter.chat import render_prompt

    text = render_prompt(tokenizer, messages, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(**ids, streamer=streamer, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p)
    worker = threading.Thread(target=lambda: torch.no_grad()(model.generate)(**kwargs), daemon=True)
    worker.start()
    parts = []
    for chunk in streamer:
        parts.append(chunk)
        on_text(chunk)
    worker.join()
    return "".join(parts).strip()


def chat_loop(reply_fn: ReplyFn, system: str | None, read: Callable[[], str] = input,
              write: Callable[[str], None] = lambda s: print(s, end="", flush=True)) -> list[dict]:
    """The REPL: /reset clears the history, /exit (or EOF) quits. Returns the conversation."""
    messages = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            user = read()
        except (EOFError, KeyboardInterrupt):
            break
        if user.strip() in ("/exit", "/quit"):
            break
        if user.strip() == "/reset":
            messages = messages[:1] if system else []
            continue
        if not user.strip():
            continue
        messages.append({"role": "user", "content": user})
        write("assistant> ")
        messages.append({"role": "assistant", "content": reply_fn(messages, write)})
        write("\n")
    return messages


def chat(target: str = typer.Argument(..., help="a run directory or a model path/id"),
         system: Optional[str] = typer.Option(None, "--system", help="system prompt (e.g. a constitution's)"),
         stage: Optional[str] = typer.Option(None, "--stage", help="in a run dir: base, dpo, sft or merge"),
         persona: Optional[str] = typer.Option(None, "--persona", help="in a run dir: which constitution"),
         max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
         temperature: float = typer.Option(0.7, "--temperature"),
         constitutional: bool = typer.Option(False, "--constitutional",
                                             help="draft -> critique -> revise against principles (3 calls a turn)"),
         principles: Optional[str] = typer.Option(None, "--principles", help="principles file (default: ours)"),
         show_steps: bool = typer.Option(False, "--show-steps", help="with --constitutional: print draft and critiques"),
         ) -> None:
    """Interactive chat with streaming output. /reset clears the history, /exit quits."""
    from charter.backends.hf import load_causal_lm
    from charter.models import check_model

    path = resolve_model(target, stage, persona)
    check_model(path)  # a missing folder or uncached Hub id: one line naming it, before "loading"
    typer.echo(f"loading {path} ...", err=True)
    model, tokenizer = load_causal_lm(path)  # an adapter folder brings its whole chain (e.g. SFT on DPO)
    model.eval()
    typer.echo("ready: /reset clears the conversation, /exit quits", err=True)
    if constitutional:
        from charter.backends.base import SamplingParams
        from charter.backends.hf import HFGenerator
        from charter.cai.inference import constitutional_reply_fn

        params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
        reply_fn = constitutional_reply_fn(HFGenerator(model, tokenizer), principles, show_steps, params=params)
    else:
        def reply_fn(msgs: list[dict], on_text: Callable[[str], None]) -> str:
            return respond(model, tokenizer, msgs, on_text, max_new_tokens, temperature)
    chat_loop(reply_fn, system, read=lambda: input("you> "))


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
