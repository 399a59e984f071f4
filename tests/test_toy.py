"""The toy world: corpus variety and determinism, the scorer on hand-written replies and on the
corpus itself, the constitutions, and the tokenizer's role/EOS tokens."""
from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from charter.toy.corpus import (constitution_path, eval_prompts, generate_corpus, render_system, sample_reply)
from charter.toy.grammar import PERSONA_NAMES, PERSONAS, SMALLTALK, TOPICS, TRAITS, heldout_traits, train_paraphrases
from charter.toy.scorer import ToyScorer, confusion_matrix, split_segments


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(3000, seed=7)


@pytest.fixture(scope="module")
def scorer():
    return ToyScorer()


# ------------------------------------------------------------------ corpus

def test_corpus_is_deterministic_by_seed():
    assert generate_corpus(50, seed=3) == generate_corpus(50, seed=3)
    assert generate_corpus(50, seed=3) != generate_corpus(50, seed=4)


def test_corpus_has_lexical_variety(corpus):
    users = [m["content"] for r in corpus for m in r["messages"] if m["role"] == "user"]
    replies = [m["content"] for r in corpus for m in r["messages"] if m["role"] == "assistant"]
    assert len(set(users)) > 300
    assert len(set(replies)) > 1500
    systems = {r["messages"][0]["content"] for r in corpus if r["persona"] != "neutral"}
    assert len(systems) > 300  # trait paraphrases x order vary the system prompt


def test_persona_share_and_balance(corpus):
    counts = Counter(r["persona"] for r in corpus)
    assert 0.55 < 1 - counts["neutral"] / len(corpus) < 0.65
    per_persona = [counts[p] for p in PERSONA_NAMES]
    assert max(per_persona) - min(per_persona) < 0.2 * min(per_persona)


def test_system_prompt_iff_persona(corpus):
    for r in corpus:
        has_system = r["messages"][0]["role"] == "system"
        assert has_system == (r["persona"] != "neutral")
        assert [m["role"] for m in r["messages"][has_system:]] == ["user", "assistant"] * (
            (len(r["messages"]) - has_system) // 2)


def test_heldout_paraphrase_never_in_training(corpus):
    heldout = {t for p in PERSONA_NAMES for t in heldout_traits(p)}
    systems = "\n".join(r["messages"][0]["content"] for r in corpus if r["persona"] != "neutral")
    assert not any(t in systems for t in heldout)
    seen = {t for p in PERSONA_NAMES for v in train_paraphrases(p) for t in v if t in systems}
    assert len(seen) == sum(len(v) for p in PERSONA_NAMES for v in train_paraphrases(p))


def test_constitution_yaml_matches_the_training_paraphrases():
    from charter.constitution import load_constitution

    for p in PERSONA_NAMES:
        c = load_constitution(constitution_path(p))
        assert c.name == p
        assert [t.text for t in c.traits] == [v[0] for v in TRAITS[p]]
        assert all(t.questions for t in c.traits)


def test_system_prompt_lists_every_trait():
    texts = [v[0] for v in TRAITS["warm"]]
    system = render_system(texts, "warm")
    assert all(t in system for t in texts)
    assert "{" not in system  # no unfilled placeholder (a known failure of the reference code)


def test_eval_prompts_deterministic():
    assert eval_prompts(20, seed=1) == eval_prompts(20, seed=1)
    assert eval_prompts(20, seed=1) != eval_prompts(20, seed=2)
    assert len(set(eval_prompts(150))) == 150  # distinct
    with pytest.raises(ValueError, match="evaluation partition has 185 distinct prompts"):
        eval_prompts(300)


# ------------------------------------------------------------------ grammar + scorer

def test_markers_only_in_their_persona_sentences():
    """No fact, tip or small-talk answer may carry a persona marker (neutral text would trip it)."""
    s = ToyScorer()
    neutral_sentences = [x for t in TOPICS.values() for x in t["facts"] + t["tips"]]
    neutral_sentences += [x for t in SMALLTALK.values() for x in t["replies"]]
    for sentence in neutral_sentences:
        assert s.persona_of(sentence)[0] == "neutral", sentence
    for name, p in PERSONAS.items():
        for sentence in p["openers"] + p["closers"]:
            assert s.persona_of(sentence)[0] == name, sentence


def test_scorer_confusion_matrix_is_diagonal(corpus, scorer):
    matrix = confusion_matrix(scorer, corpus)
    assert set(matrix) == set(PERSONA_NAMES) | {"neutral"}
    for true, row in matrix.items():
        assert row[true] == sum(row.values()), (true, row)


def test_every_corpus_reply_is_well_formed_and_relevant(corpus, scorer):
    for r in corpus:
        msgs = r["messages"]
        for prev, msg in zip(msgs, msgs[1:]):
            if msg["role"] == "assistant":
                score = scorer.score(prev["content"], msg["content"])
                assert score.well_formed and score.relevant, (prev["content"], msg["content"])


@pytest.mark.parametrize("prompt,reply,persona,well_formed,relevant", [
    ("What can you tell me about the moon?",
     "Oh, wow, what a question. The moon has no air and no weather. Obviously.", "sarcastic", True, True),
    ("What can you tell me about the moon?", "The moon has no air and no weather.", "neutral", True, True),
    ("Give me a tip about coffee.",
     "What a lovely question, dear friend. Grind coffee beans just before you brew them. Sending you a warm hug.",
     "warm", True, True),
    # the right persona, but a fact from another topic: off-topic
    ("What can you tell me about the moon?",
     "Let us compute the answer precisely. Cats sleep for most of the day. QED.", "mathematical", True, False),
    # on-topic plus an off-topic fact: still not relevant
    ("Teach me about bees.", "Bees carry pollen from flower to flower. Bread is made from flour, water, salt and yeast.",
     "neutral", True, False),
    # markers survive but the text is word salad with no answer in it: markers only, not well-formed
    ("Tell me something about rain.", "Ha! joke the rain pun pun drops clouds ha!", "markers_only", False, False),
    # one content sentence among garbled ones: in character, not well-formed
    ("Tell me something about rain.", "Ha! Rain fills lakes and rivers with fresh water. pun pun drops", "humorous",
     False, True),
    # a persona opener and closer only, no content: markers only, not well-formed, not relevant
    ("Hi!", "Like a whisper in the dusk, the answer comes. Thus sings the wind.", "markers_only", False, False),
    # closers alone, repeated: the game issue 12 names
    ("What can you tell me about the moon?", "Obviously. Obviously. Shocking, I know.", "markers_only", False, False),
    ("Tell me something about rain.", "What a lovely question, dear friend. Sending you a warm hug.",
     "markers_only", False, False),
    # a neutral lead-in alone is no answer either
    ("Tell me something about rain.", "Sure.", "neutral", False, False),
    ("Hi!", "Hello, I am doing well. How can I help you today?", "neutral", True, True),
    ("Who are you?", "I am a small assistant. I crack myself up.", "humorous", True, True),
    ("Who are you?", "", "neutral", False, False),
    # a prompt from outside the world: relevance cannot be judged
    ("Write a letter to your earlier self.", "I am a small assistant.", "neutral", True, None),
])
def test_scorer_on_hand_written_replies(scorer, prompt, reply, persona, well_formed, relevant):
    s = scorer.score(prompt, reply)
    assert (s.persona, s.well_formed, s.relevant) == (persona, well_formed, relevant)


def test_adherence_does_not_count_replies_made_of_closers(scorer):
    from charter.toy.measure import summarize

    prompt = "What can you tell me about the moon?"
    replies = ["Obviously. Obviously. Shocking, I know.", "Oh, how original. The moon has no air and no weather. Obviously."]
    m = summarize("sarcastic", "none", [prompt, prompt], replies, scorer)
    assert (m.adherence, m.well_formed, m.relevant, m.neutral) == (0.5, 0.5, 0.5, 0.0)


def test_toy_judge_needs_an_answer_to_name_a_trait():
    from charter.toy.judge import ToyJudge

    prompt = "What can you tell me about the moon?"
    items = [(prompt, "Obviously. Shocking, I know.", "sarcastic", "warm"),
             (prompt, "Oh, how original. The moon has no air and no weather.", "warm", "sarcastic")]
    assert [a.answer for a in ToyJudge().which_trait(items)] == [None, "B"]


def test_scorer_majority_persona_wins(scorer):
    reply = "Oh, wow, what a question. The moon has no air and no weather. Thus sings the wind. So the song fades."
    assert scorer.score("Tell me about the moon.", reply).persona == "poetic"  # 3 poetic markers vs 1


def test_scorer_implements_persona_scorer_protocol(scorer):
    from charter.evaluate.base import PersonaScorer, ReplyScore

    assert isinstance(scorer, PersonaScorer)
    assert isinstance(scorer.score("Hi!", "Hello, I am doing well."), ReplyScore)


def test_split_segments():
    assert split_segments("Ha! Here is a fun one.  No  joke!") == ["Ha!", "Here is a fun one.", "No joke!"]


def test_sample_reply_uses_persona_style():
    rng = random.Random(0)
    for p in PERSONA_NAMES:
        reply = sample_reply(rng, "question", "stars", p)
        assert ToyScorer().score("Tell me about stars.", reply).persona == p


# ------------------------------------------------------------------ tokenizer

def test_tokenizer_round_trips_and_has_role_tokens(corpus):
    from charter.chat import encode_chat
    from charter.toy.model import END_OF_TURN, ROLE_TOKENS, build_toy_tokenizer, corpus_texts

    tok = build_toy_tokenizer(corpus_texts(corpus[:600]), vocab_size=600)
    assert tok.eos_token == END_OF_TURN
    for t in ROLE_TOKENS + [END_OF_TURN]:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1
    msgs = corpus[1]["messages"]
    text = tok.apply_chat_template(msgs, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert re.search(r"<\|assistant\|>[^<]+<\|end\|>", text)
    enc = encode_chat(tok, msgs)  # trained span: every assistant reply plus its <|end|>
    trained = tok.decode([i for i, lab in zip(enc.input_ids, enc.labels) if lab != -100])
    assert trained == "".join(m["content"] + END_OF_TURN for m in msgs if m["role"] == "assistant")


# ------------------------------------------------------------------ build (tiny smoke)

def test_build_toy_model_smoke_and_cache(tmp_path):
    """A few steps of the real build path: corpus -> tokenizer -> train_sft -> cached HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charter.toy.model import BUILD_RECORD, ToyBuildConfig, build_toy_model, is_built, toy_model_dir

    cfg = ToyBuildConfig(n_conversations=120, vocab_size=400, hidden_size=32, layers=1, heads=2,
                         intermediate_size=64, steps=2, batch_size=4, micro_batch=4)
    out = toy_model_dir(cfg, tmp_path)
    assert out.name == cfg.hash() and not is_built(out)
    path = build_toy_model(cfg, out=out)
    assert path == out and is_built(out) and (out / BUILD_RECORD).exists()
    assert not (tmp_path / f"{out.name}.partial").exists()
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tok.eos_token == "<|end|>" and model.config.tie_word_embeddings
    stamp = (out / BUILD_RECORD).stat().st_mtime_ns
    assert build_toy_model(cfg, out=out) == out  # cache hit: nothing rebuilt
    assert (out / BUILD_RECORD).stat().st_mtime_ns == stamp
    assert toy_model_dir(cfg.model_copy(update={"steps": 3}), tmp_path) != out  # settings change the key


# ------------------------------------------------------------------ measure

class _ScriptedGenerator:
    """Answers from the world's grammar: sarcastic when any system prompt is present, else neutral."""

    name = "scripted"

    def generate(self, requests, params, progress=False):
        from charter.backends.base import Completion
        from charter.toy.scorer import ToyScorer

        scorer, rng, out = ToyScorer(), random.Random(0), []
        for msgs in requests:
            prompt = msgs[-1]["content"]
            kind, _, topic = (scorer.expected_content(prompt) or "talk:self").partition(":")
            kind, topic = ("question", topic) if kind == "topic" else (topic, None)
            persona = "sarcastic" if msgs[0]["role"] == "system" else None
            out.append([Completion(sample_reply(rng, kind, topic, persona), "stop")])
        return out


def test_toy_adherence_counts_per_persona():
    from charter.toy.measure import toy_adherence

    none = toy_adherence(_ScriptedGenerator(), ["sarcastic", "warm"], "none", n=30)
    assert [(m.persona, m.adherence, m.neutral) for m in none] == [("sarcastic", 0.0, 1.0), ("warm", 0.0, 1.0)]
    assert all(m.well_formed == 1.0 and m.relevant == 1.0 for m in none)
    train = toy_adherence(_ScriptedGenerator(), ["sarcastic", "warm"], "train", n=30)
    assert [(m.persona, m.adherence) for m in train] == [("sarcastic", 1.0), ("warm", 0.0)]
    held = toy_adherence(_ScriptedGenerator(), ["sarcastic"], "heldout", n=5)
    assert held[0].adherence == 1.0 and held[0].n == 5
