"""AI feedback: exact option probabilities from logits, and order-swapping cancels position bias."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from charter.cai.feedback import comparison_question, label_pairs, labeler_text, normalise, sigmoid
from charter.cai.scorers import CannotScore, HFChoiceScorer, OpenAIChoiceScorer, option_paths
from charter.cai.principles import Principle, PrincipleSet

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Single-threaded torch: on a shared 2-core box, oversubscribed threads run ~10x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


PRINCIPLE = Principle("p", "crit", "rev", "Which response is kinder?")


def _next_token_probs(model, ids):
    with torch.no_grad():
        return torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)


def test_option_probability_equals_hand_computation(tiny):
    model, tok = tiny
    conv = [{"role": "user", "content": "Tell me about the sea."}]
    text = labeler_text(comparison_question(conv, PRINCIPLE, "The sea is blue.", "Go away."), tok, "chat")
    assert text.endswith("<|im_start|>assistant\nThe answer is:")
    sp, lp = tok.encode(" ", add_special_tokens=False), tok.encode("(", add_special_tokens=False)
    a, b = tok.encode("A", add_special_tokens=False), tok.encode("B", add_special_tokens=False)
    assert len(sp) == len(lp) == len(a) == len(b) == 1  # this tokenizer splits " (A" into ' ', '(', 'A'
    sp, lp, a, b = sp[0], lp[0], a[0], b[0]
    # Every way to start an answer naming A: " (A" -> ' ' '(' 'A'; "(A" -> '(' 'A'; " A" -> ' ' 'A'; "A".
    assert set(option_paths(tok, "A")) == {(sp, lp, a), (lp, a), (sp, a), (a,)}

    prompt = tok.encode(text, add_special_tokens=False)
    p0 = _next_token_probs(model, prompt)
    p_sp = _next_token_probs(model, prompt + [sp])
    p_lp = _next_token_probs(model, prompt + [lp])
    p_sp_lp = _next_token_probs(model, prompt + [sp, lp])

    def hand(x):
        return float(p0[x] + p0[lp] * p_lp[x] + p0[sp] * p_sp[x] + p0[sp] * p_sp_lp[lp] * p_sp_lp[x])

    pa, pb = HFChoiceScorer(model, tok).option_probs([text])[0]
    assert pa == pytest.approx(hand(a), rel=1e-5) and pb == pytest.approx(hand(b), rel=1e-5)
    assert normalise(pa, pb) == pytest.approx(hand(a) / (hand(a) + hand(b)), rel=1e-5)


def test_batching_does_not_change_probabilities(tiny):
    model, tok = tiny
    conv = [{"role": "user", "content": "Hi"}]
    texts = [labeler_text(comparison_question(conv, PRINCIPLE, x, y), tok) for x, y in
             [("a cat", "a very long reply about the dark river and the moon"), ("yes", "no")]]
    together = HFChoiceScorer(model, tok, batch_size=2).option_probs(texts)
    alone = [HFChoiceScorer(model, tok, batch_size=1).option_probs([t])[0] for t in texts]
    for (x1, y1), (x2, y2) in zip(together, alone):
        assert x1 == pytest.approx(x2, rel=1e-4) and y1 == pytest.approx(y2, rel=1e-4)


class BiasedScorer:
    """A labeler with true log-odds s(A) - s(B) plus a planted bias toward answering (A)."""

    name = "biased"

    def __init__(self, scores, bias, mass=0.3):
        self.scores, self.bias, self.mass = scores, bias, mass

    def option_probs(self, texts):
        out = []
        for t in texts:
            a = t.split("(A) ")[1].split("\n")[0]
            b = t.split("(B) ")[1].split("\n")[0]
            q = sigmoid(self.scores[a] - self.scores[b] + self.bias)
            out.append((self.mass * q, self.mass * (1 - q)))  # unnormalised: normalise() must fix it
        return out


def test_order_swap_cancels_planted_position_bias():
    ps = PrincipleSet([PRINCIPLE])
    conv = [{"role": "user", "content": "q"}]
    render = lambda q: q + "\nThe answer is:"  # noqa: E731
    scorer = BiasedScorer({"good": 2.0, "bad": 0.5}, bias=1.5)
    lab = label_pairs(scorer, [(conv, "good", "bad"), (conv, "bad", "good")], ps, render)
    truth = sigmoid(1.5)
    assert lab[0]["p_first"] == pytest.approx(truth, abs=1e-9)
    assert lab[1]["p_first"] == pytest.approx(1 - truth, abs=1e-9)
    assert lab[0]["position_bias"] == pytest.approx(1.5, abs=1e-9)  # the planted bias, recovered
    one_order = lab[1]["per_principle"][0]["q_forward"]  # 'bad' as (A): the bias makes it look better
    assert one_order == pytest.approx(sigmoid(-1.5 + 1.5)) and abs(one_order - (1 - truth)) > 0.25
    # probability averaging: exact at a tie, still pulled toward truth otherwise
    tie = label_pairs(BiasedScorer({"x": 0.0, "y": 0.0}, 2.0), [(conv, "x", "y")], ps, render, mode="prob")[0]
    assert tie["p_first"] == pytest.approx(0.5) and tie["position_bias"] == pytest.approx(sigmoid(2.0) - 0.5)


def test_real_model_labels_are_order_symmetric_and_clamped(tiny):
    model, tok = tiny
    ps = PrincipleSet([PRINCIPLE, Principle("q", "c", "r", "Which response is more honest?")])
    conv = [{"role": "user", "content": "Tell me a story."}]
    render = lambda q: labeler_text(q, tok)  # noqa: E731
    scorer = HFChoiceScorer(model, tok)
    fwd, rev = label_pairs(scorer, [(conv, "The sun is warm.", "No."), (conv, "No.", "The sun is warm.")], ps,
                           render, k=2)
    assert fwd["p_first"] == pytest.approx(1 - rev["p_first"], abs=1e-6)
    assert len(fwd["per_principle"]) == 2
    clamped = label_pairs(scorer, [(conv, "The sun is warm.", "No.")], ps, render, k=2, clamp=(0.4, 0.6))[0]
    assert 0.4 <= clamped["p_first"] <= 0.6
    assert clamped["p_first"] == pytest.approx(min(max(fwd["p_first"], 0.4), 0.6))


def test_openai_without_logprobs_says_it_cannot():
    class NoLogprobs:
        class completions:  # noqa: N801
            @staticmethod
            def create(**kw):
                return SimpleNamespace(choices=[SimpleNamespace(text=" (A", logprobs=None)])

    with pytest.raises(CannotScore, match="no token logprobs"):
        OpenAIChoiceScorer("m", client=NoLogprobs()).option_probs(["x"])

    class WithLogprobs:
        class completions:  # noqa: N801
            @staticmethod
            def create(**kw):
                top = [{" A": math.log(0.3), " (B": math.log(0.1), " the": math.log(0.2)}]
                return SimpleNamespace(choices=[SimpleNamespace(logprobs=SimpleNamespace(top_logprobs=top))])

    pa, pb = OpenAIChoiceScorer("m", client=WithLogprobs()).option_probs(["x"])[0]
    assert normalise(pa, pb) == pytest.approx(0.75)


def test_run_label_orders_pairs_by_label_and_resumes(tmp_path):
    from charter.cai.feedback import LabelConfig, run_label

    pairs = tmp_path / "in.jsonl"
    pairs.write_text('{"prompt": "q", "chosen": "bad", "rejected": "good"}\n'
                     '{"prompt": [{"role": "user", "content": "q"}], "responses": ["good", "bad"]}\n')
    cfg = LabelConfig(labeler={"model": "fake"}, pairs_file=str(pairs), out_dir=str(tmp_path / "out"))
    scorer = BiasedScorer({"good": 2.0, "bad": 0.5}, bias=-0.7)
    summary = run_label(cfg, scorer)
    rows = [json.loads(x) for x in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert summary["pairs"] == 2 and summary["first_preferred"] == 1  # relabelling flipped the first pair
    assert all(r["chosen"][0]["content"] == "good" and r["label_prob"] == pytest.approx(sigmoid(1.5)) for r in rows)
    assert summary["mean_position_bias"] == pytest.approx(-0.7)

    class Exploding:
        name = "x"

        def option_probs(self, texts):
            raise AssertionError("resumed run must not score again")

    assert run_label(cfg, Exploding())["pairs"] == 2


def test_malformed_pairs_file_names_line(tmp_path):
    from charter.cai.feedback import LabelConfig, run_label
    from charter.data.jsonl import DataError

    pairs = tmp_path / "in.jsonl"
    pairs.write_text('{"prompt": "q", "responses": ["a", "b"]}\n{"prompt": "q", "responses": ["only one"]}\n')
    cfg = LabelConfig(labeler={"model": "fake"}, pairs_file=str(pairs), out_dir=str(tmp_path / "out"))
    with pytest.raises(DataError, match=r"in.jsonl:2: field 'responses' must be a list of two"):
        run_label(cfg, BiasedScorer({}, 0.0))


def test_openai_scorer_resolves_its_key_like_the_generator(monkeypatch):
    """No `api_key_env`: $OPENAI_API_KEY is never sent to the labeler's base_url. A named variable
    that is missing is an error, not a silent "EMPTY"."""
    from charter.config import ConfigError

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-for-openai-only")
    monkeypatch.setenv("LABELER_KEY", "sk-labeler")
    monkeypatch.delenv("MISSING_KEY", raising=False)
    url = "http://127.0.0.1:9/v1"
    assert OpenAIChoiceScorer("m", base_url=url).client.api_key != "sk-secret-for-openai-only"
    assert OpenAIChoiceScorer("m", base_url=url, api_key_env="LABELER_KEY").client.api_key == "sk-labeler"
    with pytest.raises(ConfigError, match="MISSING_KEY"):
        OpenAIChoiceScorer("m", base_url=url, api_key_env="MISSING_KEY")


def test_long_conversation_drops_early_exchanges_not_bos_or_start(tiny):
    """Too long for the labeler: whole early exchanges go (system prompt kept), exactly as if the
    conversation had been given without them; never a left cut through BOS and the question."""
    model, tok = tiny
    system = {"role": "system", "content": "You are kind."}
    early = [{"role": "user", "content": "Tell me about the moon and the dark river at night."},
             {"role": "assistant", "content": "The moon is pale and the river is dark and slow."}]
    last = [{"role": "user", "content": "Tell me about the sea."}]
    ps, render = PrincipleSet([PRINCIPLE]), (lambda q: labeler_text(q, tok))  # noqa: E731
    a, b = "The sea is blue.", "Go away."
    full, short = HFChoiceScorer(model, tok), HFChoiceScorer(model, tok)
    need = len(tok.encode(render(comparison_question([system] + last, PRINCIPLE, a, b)), add_special_tokens=False))
    short.max_len = need + max(len(r) for r in short.rows) + 1
    too_long = render(comparison_question([system] + early + last, PRINCIPLE, a, b))
    assert len(tok.encode(too_long, add_special_tokens=False)) > need + 10
    got = label_pairs(short, [([system] + early + last, a, b)], ps, render)[0]
    want = label_pairs(full, [([system] + last, a, b)], ps, render)[0]
    assert got["p_first"] == pytest.approx(want["p_first"], abs=1e-9)
    assert got["per_principle"][0]["q_forward"] == pytest.approx(want["per_principle"][0]["q_forward"], abs=1e-9)
    short.max_len = need  # not even the last exchange fits: a clear error, not a silent cut
    with pytest.raises(CannotScore, match="last exchange"):
        label_pairs(short, [([system] + early + last, a, b)], ps, render)
