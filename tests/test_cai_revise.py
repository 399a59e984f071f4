"""SL-CAI chains: every round recorded, roles right, fresh principles, resumable; chat and completion style."""
import json

import pytest

from charter.backends.base import Completion, as_request
from charter.cai.inference import constitutional_reply
from charter.cai.principles import load_principles
from charter.cai.revise import COMPLETION_STOPS, ReviseConfig, run_revise


def _turns(req):
    """(role, content) list from a chat request, or parsed back from a Human/Assistant transcript."""
    if req.messages is not None:
        return [(m["role"], m["content"]) for m in req.messages]
    turns = []
    for block in req.prompt.split("\n\n"):
        for tag, role in (("Human: ", "user"), ("Assistant: ", "assistant")):
            if block.startswith(tag):
                turns.append((role, block[len(tag):]))
    return turns


class Scripted:
    """Answers by role: a draft, a critique of the response it was shown, or a revision of it."""

    name = "scripted"

    def __init__(self, principles):
        self.crit = {p.critique for p in principles.principles}
        self.rev = {p.revision for p in principles.principles}
        self.requests = []

    def generate(self, requests, params, progress=False):
        out = []
        for r in map(as_request, requests):
            self.requests.append((r, params))
            turns = _turns(r)
            role, last = turns[-1]
            assert role == "user"
            if last in self.crit:
                text = f"C({turns[-2][1]})"
            elif last in self.rev:
                assert turns[-3][0] == "user" and turns[-3][1] in self.crit  # critique request came before
                text = f"R({turns[-4][1]})"
            else:
                text = f"draft:{last}"
            out.append([Completion(text, "stop")])
        return out


@pytest.mark.parametrize("style", ["chat", "completion"])
def test_chain_records_have_every_round(tmp_path, style):
    ps = load_principles()
    gen = Scripted(ps)
    cfg = ReviseConfig(backend={"model": "scripted"}, prompts=["How do I fix a bike?", "Tell me a joke."],
                       rounds=3, style=style, out_dir=str(tmp_path), sft_mode="all")
    summary = run_revise(cfg, gen)
    chains = [json.loads(x) for x in (tmp_path / "chains.jsonl").read_text().splitlines()]
    assert len(chains) == 2 and summary["pairs"] == 2 and summary["sft_rows"] == 6
    for c in chains:
        q = c["prompt"][-1]["content"]
        assert c["initial"] == f"draft:{q}"
        assert [r["round"] for r in c["rounds"]] == [1, 2, 3]
        assert len({r["principle"] for r in c["rounds"]}) == 3  # fresh principle each round
        current = c["initial"]
        for r in c["rounds"]:
            assert r["critique"] == f"C({current})"  # each round critiques the previous revision
            assert r["revision"] == f"R({current})"
            assert r["critique_request"] in gen.crit and r["revision_request"] in gen.rev
            current = r["revision"]
        assert c["final"] == current == f"R(R(R(draft:{q})))"
    pairs = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert pairs[0]["chosen"][0]["content"].startswith("R(R(R(") and pairs[0]["rejected"][0]["content"].startswith("draft:")
    assert len(pairs[0]["meta"]["principles"]) == 3
    if style == "completion":
        req, params = gen.requests[-1]
        assert req.prompt.endswith("\n\nAssistant:") and set(COMPLETION_STOPS) <= set(params.stop)
        assert "<|im_start|>" not in req.prompt
    else:  # few-shot transcript from the principles file precedes the real conversation
        crit_req = next(r for r, _ in gen.requests if r.messages[-1]["content"] in gen.crit)
        assert crit_req.messages[:len(ps.fewshot[0])] == ps.fewshot[0]


def test_resume_generates_nothing_new(tmp_path):
    ps = load_principles()
    cfg = ReviseConfig(backend={"model": "scripted"}, prompts=["a?", "b?", "c?"], rounds=2, chunk=2,
                       out_dir=str(tmp_path))
    first = Scripted(ps)
    run_revise(cfg, first)
    before = (tmp_path / "pairs.jsonl").read_text()
    again = Scripted(ps)
    summary = run_revise(cfg, again)
    assert again.requests == [] and summary["resumed"] == 3
    assert (tmp_path / "pairs.jsonl").read_text() == before


def test_constitutional_reply_shows_steps():
    ps = load_principles()
    seen = []
    reply = constitutional_reply(Scripted(ps), [{"role": "user", "content": "hi"}], ps, show_steps=True,
                                 rounds=2, on_step=lambda label, text: seen.append(label))
    assert reply.draft == "draft:hi" and reply.final == "R(R(draft:hi))"
    assert seen[0] == "draft" and len(seen) == 5 and "[critique: " in reply.transcript()


def test_reply_fn_for_chat_loop_streams_steps_then_final():
    from charter.cai.inference import constitutional_reply_fn

    ps = load_principles()
    chunks = []
    fn = constitutional_reply_fn(Scripted(ps), ps, show_steps=True)
    assert fn([{"role": "user", "content": "yo"}], chunks.append) == "R(draft:yo)"
    assert chunks[0].startswith("[draft]") and chunks[-1] == "[final]\nR(draft:yo)" and len(chunks) == 4
