"""Base models stay base in training (`chat: false`), and template refusals read as one line.

A base model whose tokenizer ships a chat template (Qwen2.5 base does) is prompted with the plain
`Human:`/`Assistant:` frame when `chat` is false; SFT and DPO must train on exactly that frame,
and the template-leak guard must keep template markers out of its training data.
"""
from __future__ import annotations

import json

import pytest

from charter.backends.base import GenerationRequest
from charter.backends.hf import HFGenerator
from charter.chat import IGNORE_INDEX, TemplateError, TemplateLeakError, encode_dataset, render_prompt
from charter.data.jsonl import DataError
from charter.tiny import build_model, build_tokenizer
from charter.train.data import load_pairs, read_sft
from charter.train.dpo import DPOConfig
from charter.train.sft import SFTConfig

CONV = [{"role": "user", "content": "Tell me about the sea."},
        {"role": "assistant", "content": "The sea is dark."},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "Because of the moon."}]


@pytest.fixture(scope="module")
def tok():
    """A tokenizer WITH a ChatML template and an EOS, as a base model may ship."""
    return build_tokenizer(bos_token="<s>", eos_token="</s>", extra_special=["</s>"])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_with_chat_false_trains_on_the_prompting_frame(tok, tmp_path):
    assert tok.chat_template  # the template is there, and must be ignored
    gen = HFGenerator(build_model(tok), tok, device="cpu", chat=False)
    prompt_ids = gen.prompt_ids(GenerationRequest(messages=CONV[:3]))
    (row,), _ = read_sft(write_jsonl(tmp_path / "sft.jsonl", [{"messages": CONV}]), tok, None, chat=False)
    # token by token, the row starts with exactly what the generator feeds the base model
    assert row.input_ids[: len(prompt_ids)] == prompt_ids
    assert tok.decode(row.input_ids) == "<s>Human: Tell me about the sea.\n\nAssistant: The sea is dark.</s>" \
                                        "\n\nHuman: Why?\n\nAssistant: Because of the moon.</s>"
    trained = [t for t, lab in zip(row.input_ids, row.labels) if lab != IGNORE_INDEX]
    assert tok.decode(trained) == " The sea is dark.</s> Because of the moon.</s>"
    first_prompt = gen.prompt_ids(GenerationRequest(messages=CONV[:1]))
    for start in (len(first_prompt), len(prompt_ids)):  # each reply is trained right after its prompt
        assert row.labels[start - 1] == IGNORE_INDEX and row.labels[start] == row.input_ids[start]
    assert "<|im_start|>" not in tok.decode(row.input_ids)
    # default (chat=None) still follows the template
    (chat_row,), _ = read_sft(tmp_path / "sft.jsonl", tok, None)
    assert "<|im_start|>assistant" in tok.decode(chat_row.input_ids)


def test_dpo_with_chat_false_trains_on_the_prompting_frame(tok, tmp_path):
    gen = HFGenerator(build_model(tok), tok, device="cpu", chat=False)
    prompt = CONV[:1]
    prompt_ids = gen.prompt_ids(GenerationRequest(messages=prompt))
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": prompt, "chosen": "Kind words.", "rejected": "No."}])
    (pair,), dropped = load_pairs(data, tok, None, chat=False)
    for seq, reply in ((pair.chosen, " Kind words.</s>"), (pair.rejected, " No.</s>")):
        assert seq.input_ids[: len(prompt_ids)] == prompt_ids
        assert all(lab == IGNORE_INDEX for lab in seq.labels[: len(prompt_ids)])
        assert tok.decode(seq.input_ids[len(prompt_ids):]) == reply
        assert seq.labels[len(prompt_ids):] == seq.input_ids[len(prompt_ids):]


def test_leak_guard_covers_training_data(tok, tmp_path):
    leaked = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<|im_start|>assistant\nhello"}]
    with pytest.raises(TemplateLeakError, match=r"row 1: messages\[1\]\.content: chat-template marker"):
        encode_dataset(tok, [leaked], chat=False)
    with pytest.raises(DataError, match=r"sft\.jsonl:2: messages\[1\]\.content: chat-template marker '<\|im_start\|>'"):
        read_sft(write_jsonl(tmp_path / "sft.jsonl", [{"messages": CONV}, {"messages": leaked}]), tok, None, chat=False)
    pair = {"prompt": "hi", "chosen": "ok</s> Human: more", "rejected": "no"}
    with pytest.raises(DataError, match=r"pairs\.jsonl:1: messages\[1\]\.content: chat-template marker '</s>'"):
        load_pairs(write_jsonl(tmp_path / "pairs.jsonl", [pair]), tok, None, chat=False)
    # a template's own markers are fine when the template is used
    rows, _ = encode_dataset(tok, [leaked])
    assert len(rows) == 1


def test_chat_field_on_training_configs():
    for cls in (SFTConfig, DPOConfig):
        cfg = cls(model="m", data="d", output_dir="o", chat=False)
        assert cfg.chat is False and cls(model="m", data="d", output_dir="o").chat is None


def test_run_passes_the_students_chat_flag_and_template_to_training(monkeypatch, tmp_path):
    import charter.run.training as rs
    from charter.run.config import SFTSettings

    seen = {}
    template = tmp_path / "t.jinja"
    template.write_text(GEMMA_LIKE)
    monkeypatch.setattr(rs, "train_sft", lambda cfg: seen.setdefault("cfg", cfg) and "out")
    student = {"kind": "hf", "model": "m", "chat": False, "chat_template": str(template)}
    settings = rs.SFTStage(personas=[], student=student, trainer={"launcher": "local"}, sft=SFTSettings(lr=1e-4))
    rs.train(settings, "sft", settings.sft, "m", tmp_path / "d.jsonl", tmp_path / "o", 0)
    assert seen["cfg"].chat is False and seen["cfg"].lr == 1e-4 and seen["cfg"].chat_template == str(template)


def test_chat_template_file_must_exist(tmp_path):
    from pydantic import ValidationError

    from charter.backends import BackendConfig

    with pytest.raises(ValidationError, match="no such chat template file"):
        BackendConfig(model="m", chat_template=str(tmp_path / "missing.jinja"))


# ------------------------------------------------------------------ template refusals


GEMMA_LIKE = ("{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
              "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
              "<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def test_template_refusal_is_one_line_naming_the_row(tmp_path):
    tok = build_tokenizer(chat_template=GEMMA_LIKE, bos_token="<bos>", eos_token="<eos>",
                          extra_special=["<start_of_turn>", "<end_of_turn>", "<eos>"])
    two_users = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                 {"role": "assistant", "content": "c"}]
    with pytest.raises(TemplateError) as err:
        render_prompt(tok, two_users[:2])
    msg = str(err.value)
    assert "\n" not in msg and "roles must alternate" in msg and "merge consecutive messages" in msg
    data = write_jsonl(tmp_path / "sft.jsonl", [{"messages": CONV}, {"messages": two_users}])
    with pytest.raises(DataError, match=r"sft\.jsonl:2: the chat template rejected the conversation "
                                        r"\(Conversation roles must alternate"):
        read_sft(data, tok, None)
