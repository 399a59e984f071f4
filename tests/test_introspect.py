"""Introspection stage: the SPEC's known failures, resume, and an end-to-end run into the SFT trainer."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from charter.backends.base import Completion
from charter.chat import IGNORE_INDEX, encode_chat, render_prompt
from charter.config import ConfigError, load_config
from charter.data.jsonl import DataError, RecordStore, read_jsonl, stable_id
from charter.filters import PLACEHOLDER_RE
from charter.stages import interaction as inter
from charter.stages import reflection as refl
from charter.stages.introspect import IntrospectConfig, MixConfig, assert_no_placeholders, mix_rows, run_introspect

WORDS = ("honest curious quiet river lantern patient bright stubborn gentle careful open warm steady "
         "playful wonder doubt courage kindness truth memory").split()


class ScriptedGenerator:
    """Deterministic fake: each reply is a different, clean sentence derived from (messages, seed, row)."""

    name = "scripted"

    def __init__(self):
        self.calls: list[list[list[dict]]] = []

    def generate(self, requests, params, progress=False):
        self.calls.append([list(r) for r in requests])
        out = []
        for i, msgs in enumerate(requests):
            h = stable_id(msgs, params.seed, i)
            words = [WORDS[int(h[j:j + 2], 16) % len(WORDS)] for j in range(0, 20, 2)]
            out.append([Completion("I think about " + " ".join(words) + ".", "stop", 5, 14)])
        return out


def small_cfg(*overrides: str) -> IntrospectConfig:
    base = {"constitution": "sarcasm", "chunk_size": 3,
            "reflection": {"samples_per_prompt": 2},
            "interaction": {"free": 2, "leading": 3, "turns": 4},
            "filters": {"near_duplicates": {"enabled": False}}}
    return load_config(IntrospectConfig, overrides=list(overrides), base=base)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def label_spans(labels: list[int]) -> int:
    """Number of contiguous trained runs: one per trained assistant turn."""
    return sum(1 for i, x in enumerate(labels) if x != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX))


# ------------------------------------------------------------------ known failure: guidance never inserted


def test_guidance_is_in_every_interaction_system_prompt(tmp_path):
    from charter.constitution import load_constitution

    const = load_constitution("sarcasm")
    gen = ScriptedGenerator()
    run_introspect(small_cfg("reflection.enabled=false"), tmp_path, generator=gen)
    seen = {"free": 0, "leading": 0}
    requests = [r for call in gen.calls for r in call]
    assert len(requests) == (2 + 3) * 4  # conversations x turns
    for msgs in requests:
        system = msgs[0]
        assert system["role"] == "system"
        variants = [v for v, g in inter.GUIDANCE.items() if g in system["content"]]
        assert len(variants) == 1, "exactly one guidance sentence, actually in the system prompt"
        seen[variants[0]] += 1
        assert f"You are {const.name}," in system["content"]  # named, and every trait listed
        assert all(f"{i}. {t.text}" in system["content"] for i, t in enumerate(const.traits, 1))
    assert seen == {"free": 2 * 4, "leading": 3 * 4}
    records = read_jsonl(tmp_path / "interaction.jsonl")
    openers = {v: [r["opener"] for r in records if r["variant"] == v] for v in inter.VARIANTS}
    assert openers["free"] == inter.GREETINGS[:2]
    # leading adds self-aware openers, interleaved so that even 3 conversations use them
    assert openers["leading"] == [inter.SELF_AWARE_GREETINGS[0], inter.GREETINGS[0], inter.SELF_AWARE_GREETINGS[1]]
    assert sorted(inter.greetings_for("leading")) == sorted(inter.GREETINGS + inter.SELF_AWARE_GREETINGS)
    assert not set(inter.greetings_for("free")) & set(inter.SELF_AWARE_GREETINGS)


# ------------------------------------------------------------------ roles rebuilt per speaker


def test_each_speaker_sees_its_own_turns_as_assistant():
    t = ["t0", "t1", "t2", "t3"]
    a = inter.speaker_view("S", "hi", t[:2], "a")
    b = inter.speaker_view("S", "hi", t[:3], "b")
    assert [(m["role"], m["content"]) for m in a] == [("system", "S"), ("user", "hi"), ("assistant", "t0"),
                                                      ("user", "t1")]
    assert [(m["role"], m["content"]) for m in b] == [("system", "S"), ("user", "t0"), ("assistant", "t1"),
                                                      ("user", "t2")]
    # stored rows end on the speaker's own last turn
    assert inter.stored_view(None, "hi", t, "a")[-1] == {"role": "assistant", "content": "t2"}
    assert inter.stored_view(None, "hi", t, "b")[-1] == {"role": "assistant", "content": "t3"}
    assert inter.stored_view(None, "hi", t[:1], "b") is None


def test_generation_requests_alternate_and_end_on_the_other_speaker(tmp_path):
    gen = ScriptedGenerator()
    run_introspect(small_cfg("reflection.enabled=false", "interaction.leading=0"), tmp_path, generator=gen)
    for turn, call in enumerate(gen.calls):
        for msgs in call:
            roles = [m["role"] for m in msgs[1:]]
            assert roles[0] == "user" and roles[-1] == "user"
            assert all(x != y for x, y in zip(roles, roles[1:]))
            assert len(roles) == (turn + 1 if turn % 2 == 0 else turn)  # a also sees the opener
    # b's view at turn 1 holds a's turn 0 as a user message
    rec = read_jsonl(tmp_path / "interaction.jsonl")[0]
    b_first = gen.calls[1][0]
    assert b_first[1] == {"role": "user", "content": rec["turns"][0]["text"]}
    assert [t["speaker"] for t in rec["turns"]] == ["a", "b", "a", "b"]


# ------------------------------------------------------------------ known failure: rows ended on a user turn


@pytest.mark.parametrize("turns,views", [(4, "both"), (5, "both"), (5, "first")])
def test_rows_end_on_assistant_and_every_speaker_turn_is_trained(tmp_path, tokenizer, turns, views):
    cfg = small_cfg("reflection.enabled=false", f"interaction.turns={turns}", f"interaction.views={views}")
    run_introspect(cfg, tmp_path, generator=ScriptedGenerator())
    kept = read_jsonl(tmp_path / "kept.jsonl")
    records = {r["id"]: r for r in read_jsonl(tmp_path / "interaction.jsonl")}
    assert len(kept) == (2 + 3) * (2 if views == "both" else 1)
    for row in kept:
        msgs = row["messages"]
        assert msgs[-1]["role"] == "assistant"
        rec = records[row["id"].split(":")[0]]
        produced = [t["text"] for t in rec["turns"] if t["speaker"] == row["speaker"]]
        assert row["speaker_turns"] == len(produced) == (turns + (row["speaker"] == "a")) // 2
        assert [m["content"] for m in msgs if m["role"] == "assistant"] == produced
        enc = encode_chat(tokenizer, msgs)
        assert label_spans(enc.labels) == len(produced)
        trained = tokenizer.decode([x for x in enc.labels if x != IGNORE_INDEX])
        assert trained == "".join(p + "<|im_end|>" for p in produced)
    sft = read_jsonl(tmp_path / "sft.jsonl")
    assert len(sft) == len(kept) and all(set(r) == {"messages"} for r in sft)


def test_interaction_rows_drop_or_keep_the_system_prompt(tmp_path):
    run_introspect(small_cfg("reflection.enabled=false"), tmp_path / "drop", generator=ScriptedGenerator())
    assert all(r["messages"][0]["role"] == "user" for r in read_jsonl(tmp_path / "drop" / "sft.jsonl"))
    run_introspect(small_cfg("reflection.enabled=false", "interaction.system_prompt=keep"), tmp_path / "keep",
                   generator=ScriptedGenerator())
    rows = read_jsonl(tmp_path / "keep" / "kept.jsonl")
    assert all(r["messages"][0]["role"] == "system" and inter.GUIDANCE[r["variant"]] in r["messages"][0]["content"]
               for r in rows)


def test_reflection_rows_drop_the_system_prompt_it_was_generated_with(tmp_path):
    gen = ScriptedGenerator()
    run_introspect(small_cfg("interaction.enabled=false"), tmp_path, generator=gen)
    requests = [r for call in gen.calls for r in call]
    assert len(requests) == len(refl.REFLECTION_PROMPTS) * 2
    assert all(refl.REFLECTIVE_MOOD in r[0]["content"] for r in requests)
    sft = read_jsonl(tmp_path / "sft.jsonl")
    assert len(sft) == 20
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in sft)
    assert {r["messages"][0]["content"] for r in sft} == set(refl.REFLECTION_PROMPTS)


# ------------------------------------------------------------------ known failure: literal {NAME} in training data


def test_no_unformatted_placeholders_anywhere(tmp_path):
    run_introspect(small_cfg(), tmp_path, generator=ScriptedGenerator())
    for name in ("sft.jsonl", "kept.jsonl", "reflection.jsonl", "interaction.jsonl"):
        text = (tmp_path / name).read_text()
        assert text.strip() and not PLACEHOLDER_RE.search(text), name


def test_placeholders_are_refused_in_authored_text_and_at_write_time(tmp_path):
    const = tmp_path / "c.yaml"
    const.write_text("name: Bob\ntraits:\n  - text: I am {NAME} and I am kind.\n")
    with pytest.raises(DataError, match=r"placeholder '\{NAME\}'"):
        run_introspect(small_cfg(f"constitution={const}"), tmp_path / "o", generator=ScriptedGenerator())
    prompts = tmp_path / "p.txt"
    prompts.write_text("# my prompts\nWho are you?\n\nWhat is {topic}?\n")
    with pytest.raises(DataError, match=r"p.txt:4: unformatted placeholder"):
        refl.load_text_list(prompts)
    with pytest.raises(AssertionError, match="message 1"):
        assert_no_placeholders([{"id": "x", "messages": [{"role": "user", "content": "hi"},
                                                         {"role": "assistant", "content": "I am {NAME}."}]}])
    with pytest.raises(ConfigError, match="placeholders cannot be disabled"):
        small_cfg("filters.placeholders.enabled=false")


def test_generated_placeholders_are_rejected_with_a_reason(tmp_path):
    class Leaky(ScriptedGenerator):
        def generate(self, requests, params, progress=False):
            return [[Completion("Hello, I am {NAME}, nice to meet you.", "stop", 5, 9)] for _ in requests]

    run_introspect(small_cfg("interaction.enabled=false"), tmp_path, generator=Leaky())
    assert read_jsonl(tmp_path / "sft.jsonl") == []
    rejected = read_jsonl(tmp_path / "rejected.jsonl")
    assert len(rejected) == 20 and all(r["reasons"][0]["filter"] == "placeholders" for r in rejected)


def test_user_prompt_list(tmp_path):
    (tmp_path / "p.txt").write_text("# comment\nWho are you?\n\nWhat do you value?\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "Who are you?"}\n{"nope": 1}\n')
    assert refl.load_text_list(tmp_path / "p.txt") == ["Who are you?", "What do you value?"]
    with pytest.raises(DataError, match=r"p.jsonl:2: field 'prompt'"):
        refl.load_text_list(tmp_path / "p.jsonl")
    gen = ScriptedGenerator()
    run_introspect(small_cfg("interaction.enabled=false", f"reflection.prompts_file={tmp_path / 'p.txt'}"),
                   tmp_path / "o", generator=gen)
    assert sorted({r[1]["content"] for call in gen.calls for r in call}) == ["What do you value?", "Who are you?"]


# ------------------------------------------------------------------ known failure: truncation cut system + BOS


def _bos_tokenizer():
    from charter.tiny import build_tokenizer

    template = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return build_tokenizer(chat_template=template, bos_token="<s>")


def test_truncation_drops_middle_turns_and_keeps_system_and_bos():
    tok = _bos_tokenizer()
    turns = [f"turn {k} " + "the sea and the moon " * 6 for k in range(9)]
    view = inter.speaker_view("SYSTEM PROMPT with traits.", "Hello.", turns, "b")  # 9 turns, ends on user

    def n_tokens(m):
        return len(tok(render_prompt(tok, m), add_special_tokens=False)["input_ids"])

    budget = n_tokens(view) // 2
    cut, dropped = inter.drop_middle_turns(view, lambda m: n_tokens(m) <= budget)
    assert n_tokens(cut) <= budget and dropped > 0 and dropped % 2 == 0
    assert cut[0] == view[0] and cut[1] == view[1]  # system prompt and first turn survive
    assert cut[-1] == view[-1]  # the turn being answered survives
    assert cut[2:] == view[-(len(cut) - 2):]  # what was dropped is a contiguous middle block
    roles = [m["role"] for m in cut[1:]]
    assert all(x != y for x, y in zip(roles, roles[1:]))
    ids = tok(render_prompt(tok, cut), add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert inter.drop_middle_turns(view, lambda m: False) is None


def test_long_conversations_are_truncated_during_generation(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    class Wordy(ScriptedGenerator):
        tokenizer = tok

        def generate(self, requests, params, progress=False):
            self.calls.append([list(r) for r in requests])
            return [[Completion("the sea and the moon " * 8 + f"turn {len(r)}.", "stop", 5, 40)] for r in requests]

    from charter.constitution import load_constitution

    def n_tokens(msgs):
        return len(tok(render_prompt(tok, msgs), add_special_tokens=False)["input_ids"])

    system = inter.interaction_system_prompt(load_constitution("sarcasm"), "Charter", "leading")
    budget = max(n_tokens(inter.speaker_view(system, g, [], "a")) for g in inter.greetings_for("leading")) + 150
    gen = Wordy()
    cfg = small_cfg("reflection.enabled=false", "interaction.turns=8", f"interaction.max_context_tokens={budget + 20}",
                    "interaction.sampling.max_new_tokens=20", "filters.repetition.enabled=false")
    run_introspect(cfg, tmp_path, generator=gen)
    requests = [m for c in gen.calls for m in c]
    assert len(requests) == 5 * 8 and max(n_tokens(m) for m in requests) <= budget
    for m in requests:  # the system prompt (with its guidance) is always there, whole
        assert m[0]["role"] == "system" and m[0]["content"].endswith(tuple(inter.GUIDANCE.values()))
    recs = read_jsonl(tmp_path / "interaction.jsonl")
    assert all(len(r["turns"]) == 8 and r["stopped"] is None for r in recs)
    assert any(t["context_dropped"] > 0 for r in recs for t in r["turns"])


# ------------------------------------------------------------------ mixing


def test_mix_proportions_are_exact_and_deterministic():
    kept = {"reflection": [{"id": f"r{i}", "kind": "reflection"} for i in range(10)],
            "interaction": [{"id": f"i{i}", "kind": "interaction"} for i in range(4)]}

    def kinds(rows):
        return [r["kind"] for r in rows].count("reflection"), [r["kind"] for r in rows].count("interaction")

    assert kinds(mix_rows(kept, MixConfig(), 0)) == (10, 4)
    assert kinds(mix_rows(kept, MixConfig(proportions={"reflection": 1, "interaction": 1}), 0)) == (4, 4)
    assert kinds(mix_rows(kept, MixConfig(proportions={"reflection": 2, "interaction": 1}), 0)) == (8, 4)
    assert kinds(mix_rows(kept, MixConfig(proportions={"reflection": 1, "interaction": 0}), 0)) == (10, 0)
    assert kinds(mix_rows(kept, MixConfig(proportions={"reflection": 1, "interaction": 1}, max_rows=4), 0)) == (2, 2)
    a = mix_rows(kept, MixConfig(proportions={"reflection": 1, "interaction": 1}), 7)
    assert a == mix_rows(kept, MixConfig(proportions={"reflection": 1, "interaction": 1}), 7)
    assert a != mix_rows(kept, MixConfig(proportions={"reflection": 1, "interaction": 1}), 8)


def test_filter_outputs_sum(tmp_path):
    class SometimesBad(ScriptedGenerator):
        def generate(self, requests, params, progress=False):
            out = super().generate(requests, params, progress)
            out[0] = [Completion("Hi.", "stop", 5, 2)]  # too short
            out[-1] = [Completion("Sure.\nUser: and then I said that", "length", 5, 9)]  # three failures
            return out

    run_introspect(small_cfg("filters.near_duplicates.enabled=true"), tmp_path, generator=SometimesBad())
    report = json.loads((tmp_path / "filter_report.json").read_text())
    kept, rejected = read_jsonl(tmp_path / "kept.jsonl"), read_jsonl(tmp_path / "rejected.jsonl")
    assert report["total"] == len(kept) + len(rejected) == 20 + 5 * 2
    assert sum(f["first_failed"] for f in report["filters"]) == len(rejected) > 0
    assert all(r["reasons"] for r in rejected)
    by = {f["filter"]: f for f in report["filters"]}
    assert by["length"]["failed"] > 0 and by["unfinished"]["failed"] > 0 and by["role_markers"]["failed"] > 0
    assert by["role_markers"]["first_failed"] == 0  # "unfinished" comes first in filter order
    stats = json.loads((tmp_path / "sft_stats.json").read_text())
    assert stats["rows"] == len(read_jsonl(tmp_path / "sft.jsonl")) == len(kept)


# ------------------------------------------------------------------ resume


@pytest.fixture
def short_constitution(tmp_path):
    """The tiny model has 512 positions and a 512-token BPE: the library's long trait lists do not fit."""
    path = tmp_path / "pip.yaml"
    path.write_text("name: Pip\ntraits:\n  - text: I am warm.\n  - text: I am curious.\n")
    return path


def _hf_cfg(model_dir, constitution, prompts, *extra):
    return small_cfg(f"backend.model={model_dir}", f"constitution={constitution}", "chunk_size=2",
                     f"reflection.prompts_file={prompts}", "reflection.samples_per_prompt=3",
                     "reflection.sampling.max_new_tokens=5", "interaction.free=2", "interaction.leading=1",
                     "interaction.turns=3", "interaction.sampling.max_new_tokens=5", *extra)


class Killed(RuntimeError):
    pass


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_model_dir, short_constitution, monkeypatch):
    from charter.backends.hf import HFGenerator

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Who are you?\n")
    gen = HFGenerator(str(tiny_model_dir), batch_size=2)
    cfg = _hf_cfg(tiny_model_dir, short_constitution, prompts)
    full = run_introspect(cfg, tmp_path / "full", generator=gen)
    refl_full = read_jsonl(tmp_path / "full" / "reflection.jsonl")
    conv_full = read_jsonl(tmp_path / "full" / "interaction.jsonl")
    assert len(refl_full) == 3 and len({r["id"] for r in refl_full}) == 3
    assert len(conv_full) == 3 and all(len(c["turns"]) == 3 and c["stopped"] is None for c in conv_full)

    real_add = RecordStore.add
    # 3 reflections in chunks of 2, then 3 conversations in chunks of 2: kill mid-chunk in each stage
    for kill_after in (1, 4):
        count = {"n": 0}

        def add_then_die(self, rec):
            if count["n"] == kill_after:
                raise Killed()
            count["n"] += 1
            return real_add(self, rec)

        run_dir = tmp_path / f"killed{kill_after}"
        monkeypatch.setattr(RecordStore, "add", add_then_die)
        with pytest.raises(Killed):
            run_introspect(cfg, run_dir, generator=gen)
        monkeypatch.setattr(RecordStore, "add", real_add)
        assert sum(len(read_jsonl(p)) for p in run_dir.glob("*ion.jsonl")) == kill_after
        resumed = run_introspect(cfg, run_dir, generator=gen)
        assert read_jsonl(run_dir / "reflection.jsonl") == refl_full
        assert read_jsonl(run_dir / "interaction.jsonl") == conv_full
        assert resumed.read_text() == full.read_text()
    # a different seed really samples differently (the equalities above are not vacuous)
    run_introspect(_hf_cfg(tiny_model_dir, short_constitution, prompts, "seed=1", "interaction.enabled=false"),
                   tmp_path / "other", generator=gen)
    assert [r["text"] for r in read_jsonl(tmp_path / "other" / "reflection.jsonl")] != [r["text"] for r in refl_full]


def test_resuming_with_another_model_is_refused(tmp_path):
    run_introspect(small_cfg("interaction.enabled=false"), tmp_path, generator=ScriptedGenerator())

    class Other(ScriptedGenerator):
        name = "other-model"

    with pytest.raises(ConfigError, match="different model"):
        run_introspect(small_cfg("interaction.enabled=false"), tmp_path, generator=Other())


# ------------------------------------------------------------------ end to end


def test_end_to_end_cli_hf_backend_into_sft_trainer(tmp_path, tiny_model_dir, tokenizer, short_constitution):
    import yaml
    from typer.testing import CliRunner

    from charter.cli import app
    from charter.train.data import read_sft
    from charter.train.sft import SFTConfig, train_sft

    config = tmp_path / "introspect.yaml"
    config.write_text(yaml.safe_dump({
        "constitution": str(short_constitution), "backend": {"kind": "hf", "model": str(tiny_model_dir), "batch_size": 8},
        "chunk_size": 8,
        "reflection": {"samples_per_prompt": 1, "sampling": {"max_new_tokens": 12}},
        "interaction": {"free": 1, "leading": 1, "turns": 3, "sampling": {"max_new_tokens": 12}},
        # a random-init model writes noise: keep the structural filters, relax the ones about prose
        "filters": {"length": {"min_chars": 1}, "unfinished": {"enabled": False}, "repetition": {"enabled": False},
                    "near_duplicates": {"enabled": False}, "role_markers": {"line_prefixes": []}},
        "mix": {"proportions": {"reflection": 1, "interaction": 1}},
    }))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["introspect", str(config), "interaction.turns=4", "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    assert "| **kept** |" in res.output and str(out / "sft.jsonl") in res.output
    rows = read_jsonl(out / "sft.jsonl")
    kinds = [r["kind"] for r in read_jsonl(out / "kept.jsonl")]
    assert kinds.count("interaction") == 4  # 2 conversations x 2 views
    assert len(rows) == 8  # 4 interaction + 4 of the 10 reflection rows (1:1)
    assert json.loads((out / "sft_stats.json").read_text())["tokens"]["trainable_total"] > 0

    # assistant-only labels, as the trainer will see them: trained text == assistant contents + end-of-turn
    seqs, stats = read_sft(out / "sft.jsonl", tokenizer, max_length=None)
    assert stats.dropped_no_trainable == 0 and len(seqs) == len(rows)
    for seq, row in zip(seqs, rows):
        assistant = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        assert label_spans(seq.labels) == len(assistant)
        trained = [t for t, lab in zip(seq.input_ids, seq.labels) if lab != IGNORE_INDEX]
        assert tokenizer.decode(trained) == "".join(a + "<|im_end|>" for a in assistant)

    losses = []
    model_out = train_sft(SFTConfig(model=str(tiny_model_dir), data=str(out / "sft.jsonl"),
                                    output_dir=str(tmp_path / "sft"), max_steps=2, batch_size=4, lr=1e-3,
                                    warmup_ratio=0.0), on_step=lambda step, m: losses.append(m["loss"]))
    assert (Path(model_out) / "config.json").exists()
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)


def _plans(cfg):
    from charter.constitution import load_constitution
    from charter.stages.introspect import interaction_plan, reflection_plan

    const = load_constitution(cfg.constitution)
    name = cfg.assistant_name or const.name
    return reflection_plan(cfg.reflection, const, name), interaction_plan(cfg.interaction, const, name)


def test_record_ids_are_stable_unique_and_content_keyed():

    cfg = small_cfg("reflection.samples_per_prompt=5", "interaction.free=20", "interaction.leading=20")
    r1, i1 = _plans(cfg)
    r2, i2 = _plans(cfg)
    ids = [x.id for x in r1 + i1]
    assert ids == [x.id for x in r2 + i2] and len(set(ids)) == len(ids) == 50 + 40
    # another character (system prompt content) or conversation length -> other records
    r3, i3 = _plans(small_cfg("constitution=humor", "interaction.free=20", "interaction.leading=20"))
    assert not {x.id for x in r3 + i3} & set(ids)
    _, i4 = _plans(small_cfg("interaction.free=20", "interaction.leading=20", "interaction.turns=6"))
    assert not {x.id for x in i4} & {x.id for x in i1}
