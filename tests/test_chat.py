"""Chat masking checked token by token on locally built copies of real template styles.

Each template below is written in the style of the model family's published template
(Llama-3, Qwen2.5/ChatML, Gemma, Mistral). For every conversation we decode each contiguous
run of labelled tokens and compare it with exactly "content + end-of-turn token".
"""
from __future__ import annotations

import pytest

from charter.chat import (IGNORE_INDEX, encode_chat, encode_dataset, encode_views, has_chat_template, render_prompt,
                          render_text)
from charter.tiny import build_tokenizer

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

QWEN = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are Qwen, a helpful assistant.<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

GEMMA = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# Mistral-7B-Instruct v0.1/v0.2 style: system prepended to the first user turn, no generation prompt.
MISTRAL = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.first and system_message is defined %}{{- '[INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + ' [/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}{%- endif %}{%- endfor %}"
)

# Mistral v0.3 style: the system prompt goes into the LAST user turn, so it is not prefix-stable.
MISTRAL_V3 = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}{{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}{%- endif %}{%- endfor %}"
)

# No add_generation_prompt branch at all: the assistant header lands inside the turn's span.
NO_GEN_PROMPT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"

TOKENIZERS = {
    "llama3": dict(chat_template=LLAMA3, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                   extra_special=["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"]),
    "qwen": dict(chat_template=QWEN),
    "gemma": dict(chat_template=GEMMA, bos_token="<bos>", eos_token="<eos>",
                  extra_special=["<start_of_turn>", "<end_of_turn>", "<eos>"]),
    "mistral": dict(chat_template=MISTRAL, bos_token="<s>", eos_token="</s>", extra_special=["</s>"]),
    "mistral_v3": dict(chat_template=MISTRAL_V3, bos_token="<s>", eos_token="</s>", extra_special=["</s>"]),
    "no_gen_prompt": dict(chat_template=NO_GEN_PROMPT),
    "base": dict(chat_template=None, bos_token="<s>", eos_token="</s>", extra_special=["</s>"]),
}

# What each assistant turn must be trained on, given content c.
EXPECTED = {
    "llama3": lambda c: c + "<|eot_id|>",
    "qwen": lambda c: c + "<|im_end|>",
    "gemma": lambda c: c + "<end_of_turn>",
    "mistral": lambda c: " " + c + "</s>",
    "no_gen_prompt": lambda c: c + "<|im_end|>",
    "base": lambda c: " " + c + "</s>",
}


@pytest.fixture(scope="module")
def toks():
    return {name: build_tokenizer(**kw) for name, kw in TOKENIZERS.items()}


SYSTEM = "You are kind and warm."
CONV = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Tell me a story about the sea."},
    {"role": "assistant", "content": "The sea was dark and the moon was light."},
    {"role": "user", "content": "Why is it dark?"},
    {"role": "assistant", "content": "Because the sun is back after the mountain."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "Sure, my friend."},
]
ANSWERS = [m["content"] for m in CONV if m["role"] == "assistant"]


def labelled_runs(tok, enc) -> list[str]:
    """Decode each maximal run of consecutive trained positions."""
    runs, cur = [], []
    for i, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE_INDEX:
            assert lab == i, "a trained label must equal its input token (labels are unshifted)"
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


@pytest.mark.parametrize("name", ["llama3", "qwen", "gemma", "mistral", "no_gen_prompt", "base"])
def test_every_assistant_turn_trained_exactly(toks, name):
    tok = toks[name]
    enc = encode_chat(tok, CONV)
    assert labelled_runs(tok, enc) == [EXPECTED[name](a) for a in ANSWERS]
    # input_ids are exactly the tokenization of the rendered conversation (no extra BOS, nothing lost)
    assert tok.decode(enc.input_ids) == render_text(tok, CONV)
    if tok.bos_token:
        assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids.count(tok.bos_token_id) == 1
    # token by token: every token outside the expected runs is masked
    n_expected = sum(len(tok(EXPECTED[name](a), add_special_tokens=False)["input_ids"]) for a in ANSWERS)
    assert enc.n_trainable == n_expected


def test_llama3_trims_content_and_ignores_header(toks):
    tok = toks["llama3"]
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  Hello friend.  \n"}]
    enc = encode_chat(tok, msgs)
    assert labelled_runs(tok, enc) == ["Hello friend.<|eot_id|>"]
    first_trained = next(t for t, lab in enumerate(enc.labels) if lab != IGNORE_INDEX)
    assert tok.decode(enc.input_ids[:first_trained]).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_qwen_default_system_prompt_is_not_trained(toks):
    tok = toks["qwen"]
    enc = encode_chat(tok, CONV[1:3])
    text = tok.decode(enc.input_ids)
    assert text.startswith("<|im_start|>system\nYou are Qwen")
    assert labelled_runs(tok, enc) == [ANSWERS[0] + "<|im_end|>"]


def test_gemma_folds_system_into_first_user_turn(toks):
    tok = toks["gemma"]
    enc = encode_chat(tok, CONV)
    text = tok.decode(enc.input_ids)
    assert text.startswith(f"<bos><start_of_turn>user\n{SYSTEM}\n\nTell me")
    assert "<start_of_turn>model\n" in text and "<start_of_turn>assistant" not in text
    assert SYSTEM not in "".join(labelled_runs(tok, enc))


def test_not_prefix_stable_template_trains_each_turn_in_its_own_view(toks):
    """Mistral v0.3 moves the system prompt into the last user turn: every turn gets its own row,
    rendered as the model sees it at inference, and is trained exactly once."""
    tok = toks["mistral_v3"]
    rows = encode_views(tok, CONV)
    assert [labelled_runs(tok, r) for r in rows] == [[" " + a + "</s>"] for a in ANSWERS]
    for row, i in zip(rows, [2, 4, 6]):
        assert tok.decode(row.input_ids).startswith(render_prompt(tok, CONV[:i]))
    assert encode_chat(tok, CONV).input_ids == rows[-1].input_ids  # the row ending at the final turn
    # without a system prompt the same template is prefix-stable: one row trains every turn
    (row,) = encode_views(tok, CONV[1:])
    assert labelled_runs(tok, row) == [" " + a + "</s>" for a in ANSWERS]


def test_fallback_template_for_base_models(toks):
    tok = toks["base"]
    assert not has_chat_template(tok)
    prompt = render_prompt(tok, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert prompt == "<s>Be brief.\n\nHuman: hi\n\nAssistant:"
    assert tok.chat_template is None  # the fallback is never installed as a template
    assert "<|im_start|>" not in render_text(tok, CONV)
    # a tokenizer with a template uses it
    assert render_prompt(toks["qwen"], [{"role": "user", "content": "hi"}]).endswith("<|im_start|>assistant\n")


def test_chat_flag_overrides_template_detection(toks):
    """Backends serving a base model whose tokenizer ships a template force the plain transcript."""
    msgs = [{"role": "user", "content": "hi"}]
    qwen, base = toks["qwen"], toks["base"]
    assert render_prompt(qwen, msgs, chat=False) == f"{qwen.bos_token or ''}Human: hi\n\nAssistant:"
    assert render_prompt(None, msgs, chat=False) == "Human: hi\n\nAssistant:"  # no tokenizer at hand
    assert render_prompt(qwen, msgs, chat=True) == render_prompt(qwen, msgs)
    assert render_prompt(base, msgs, chat=False) == render_prompt(base, msgs) == "<s>Human: hi\n\nAssistant:"


def test_trailing_user_turn_is_dropped_and_no_assistant_gives_none(toks):
    tok = toks["qwen"]
    enc = encode_chat(tok, CONV[:4])  # ends on a user turn
    assert tok.decode(enc.input_ids).endswith(ANSWERS[0] + "<|im_end|>\n")
    assert labelled_runs(tok, enc) == [ANSWERS[0] + "<|im_end|>"]
    assert encode_chat(tok, CONV[:2]) is None


def test_truncation_drops_early_turns_keeps_bos_and_system(toks):
    tok = toks["llama3"]
    full = encode_chat(tok, CONV)
    last_two = encode_chat(tok, [CONV[0]] + CONV[3:])
    enc = encode_chat(tok, CONV, max_length=len(full) - 1)
    assert enc.dropped_turns == 1 and enc.truncated and len(enc) <= len(full) - 1
    assert enc.input_ids == last_two.input_ids and enc.labels == last_two.labels
    assert enc.input_ids[0] == tok.bos_token_id
    assert tok.decode(enc.input_ids).startswith(f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{SYSTEM}")
    assert labelled_runs(tok, enc) == [a + "<|eot_id|>" for a in ANSWERS[1:]]


def test_truncation_cuts_end_of_final_completion(toks):
    tok = toks["llama3"]
    msgs = [CONV[0], CONV[1], CONV[2]]
    full = encode_chat(tok, msgs)
    first_trained = next(t for t, lab in enumerate(full.labels) if lab != IGNORE_INDEX)
    enc = encode_chat(tok, msgs, max_length=first_trained + 3)
    assert enc.truncated and len(enc) == first_trained + 3 and enc.n_trainable == 3
    assert enc.input_ids == full.input_ids[: first_trained + 3]
    assert tok.decode(enc.input_ids).startswith(f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{SYSTEM}")
    # prompt alone exceeds the budget: nothing trainable, row dropped
    assert encode_chat(tok, msgs, max_length=first_trained) is None


def test_encode_dataset_counts_dropped_rows(toks):
    tok = toks["llama3"]
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    long_prompt = {"messages": [{"role": "user", "content": "tell me a story " * 40},
                                {"role": "assistant", "content": "no"}]}
    no_answer = {"messages": [{"role": "user", "content": "hi"}]}
    encoded, stats = encode_dataset(tok, [short, long_prompt, no_answer, {"messages": CONV}], max_length=40)
    assert stats.rows == 4 and stats.kept == 2 and stats.dropped_no_trainable == 2
    assert stats.dropped_rows == [1, 2]
    assert all(len(e) <= 40 for e in encoded)
    assert stats.trainable_tokens == sum(e.n_trainable for e in encoded)


def test_bad_messages_name_row_index_and_field(toks):
    tok = toks["qwen"]
    with pytest.raises(ValueError, match=r"row 2: messages\[1\]\.role"):
        encode_dataset(tok, [{"messages": CONV[1:3]}, {"messages": [CONV[1], {"role": "bot", "content": "x"}]}])
    with pytest.raises(ValueError, match=r"messages\[0\]\.content"):
        encode_chat(tok, [{"role": "user", "content": 3}])


def test_agrees_with_generation_marker_masks(toks):
    """On a template with {% generation %} markers, our prefix-derived mask equals transformers' own."""
    marked = ("{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n"
              "{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}\n"
              "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok = build_tokenizer(chat_template=marked)
    ref = tok.apply_chat_template(CONV, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    enc = encode_chat(tok, CONV)
    assert enc.input_ids == list(ref["input_ids"])
    assert [int(lab != IGNORE_INDEX) for lab in enc.labels] == list(ref["assistant_masks"])


def test_header_inside_turn_is_skipped_even_when_content_repeats_it(toks):
    """Template without a generation prompt: the span holds `<|im_start|>assistant\\n` + content."""
    tok = toks["no_gen_prompt"]
    enc = encode_chat(tok, [{"role": "user", "content": "say assistant"}, {"role": "assistant", "content": "assistant"}])
    assert labelled_runs(tok, enc) == ["assistant<|im_end|>"]
