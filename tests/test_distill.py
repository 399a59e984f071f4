"""Distillation: prompt parsing/dedup, pair filters, name replacement, resume after kill -9,
and the FAULT test (server killed mid-run, restarted, resumed to the uninterrupted record set)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from charter.backends.base import Completion
from charter.constitution import Constitution, Trait
from charter.data.jsonl import read_jsonl
from charter.stages.distill import DistillConfig, pair_failure, replace_names, run_distill
from charter.stages.prompts import expand_prompts, is_near_duplicate, parse_numbered
from charter.constitution_prompt import strip_thinking, teacher_system_prompt, thinking_prefill
from serve_fixture import ServeProcess

CONST = Constitution(name="Teachy", traits=[
    Trait(text="I answer in short sentences.", questions=["empty?", "cut?", "ok one?"]),
    Trait(text="I like the sea.", questions=["unfinished?", "long?", "ok two?"]),
])


def write_constitution(tmp_path: Path, const: Constitution = CONST) -> str:
    p = tmp_path / "c.yaml"
    import yaml

    p.write_text(yaml.safe_dump(const.model_dump()))
    return str(p)


class Scripted:
    """A Generator whose answers depend on the prompt: it lets us hit every pair filter on purpose."""

    def __init__(self, name: str = "scripted"):
        self.name = name
        self.calls: list = []

    def generate(self, requests, params, progress=False):
        out = []
        for r in requests:
            self.calls.append(r)
            teacher = r.messages[0]["role"] == "system"
            q = r.messages[-1]["content"]
            text, finish = ("I am Teachy. Teachy likes you." if teacher else "Sure."), "stop"
            if q.startswith("Write a numbered list"):  # prompt expansion
                text = " Why is the sea blue?\n4. 3 cats or 2?\n5. Tell me why the sea is blue.\n6. What is rain made of?"
            elif q == "empty?" and not teacher:
                text = "  "
            elif q == "cut?" and teacher:
                finish = "length"
            elif q == "unfinished?" and teacher:
                text = "I think that"
            elif q == "long?":
                text = "Waves. " * 300
            if teacher and r.prefill.startswith("<think>"):  # thinking: closed only for the "ok" prompts
                text = (" I should be brief.</think>\n\n" + text) if q.startswith("ok") else " hmm, the sea"
            out.append([Completion(text, finish, 5, 7) for _ in range(params.n)])
        return out


def test_parse_numbered_and_near_duplicates():
    items, bad = parse_numbered("1. What is rain?\n2) Tell me a story.\n3. 42 is it?\n4. no end\n- What?\n5. Fine.")
    assert items == ["What is rain?", "Tell me a story.", "Fine."] and bad == 3
    earlier = [{"what", "is", "the", "sea"}]
    assert is_near_duplicate("What is the sky?", earlier)  # 3 of 4 words seen
    assert not is_near_duplicate("What about mountains then?", earlier)  # 1 of 4


def test_expansion_keeps_format_drops_near_duplicates_and_stops_at_target(tmp_path):
    from charter.data.jsonl import RecordStore

    gen = Scripted()
    with RecordStore(tmp_path / "expansion.jsonl") as store:
        prompts, counts = expand_prompts(CONST, gen, store, per_trait=5, samples=1, rounds=2)
    by_trait = [[p["prompt"] for p in prompts if p["trait_index"] == i] for i in range(2)]
    # trait 0: 3 seeds + 2 generated ("Tell me why the sea is blue." is a near-duplicate of "Why is the sea blue?")
    assert by_trait[0] == ["empty?", "cut?", "ok one?", "Why is the sea blue?", "What is rain made of?"]
    # trait 1 gets the same generations (twice: 2 rounds), now all near-duplicates of trait 0's prompts
    assert by_trait[1] == ["unfinished?", "long?", "ok two?"]
    assert dict(counts) == {"seed": 6, "generated": 2, "bad_format": 3, "near_duplicate": 1 + 3 + 3,
                            "short_of_target": 2, "constitution": 0}
    assert len(gen.calls) == 3  # round 2 only asks for the trait still short of its target
    again, _ = expand_prompts(CONST, gen, RecordStore(tmp_path / "expansion.jsonl"), 5, 1, 2)
    assert again == prompts and len(gen.calls) == 3  # replayed from the stored generations


def test_teacher_prompt_has_traits_and_no_placeholders():
    s = teacher_system_prompt(CONST, "Ada")
    assert "You are Ada" in s and "1. I answer in short sentences." in s and "2. I like the sea." in s
    assert "{" not in s and "NAME" not in s
    pre = thinking_prefill(CONST, "Ada")
    assert strip_thinking(" more thoughts</think>\n\nHello there.", pre) == "Hello there."
    assert strip_thinking(" thoughts that never end", pre) is None


def test_pair_filter_function():
    ok = ("Hi.", "stop", "Yo.", "stop", 10, 100)
    assert pair_failure(*ok) is None
    assert pair_failure("", "stop", "Yo.", "stop", 10, 100) == "empty"
    assert pair_failure("Hi.", "stop", " ", "stop", 10, 100) == "empty"
    assert pair_failure(None, "stop", "Yo.", "stop", 10, 100) == "no_think_end"
    assert pair_failure("Hi.", "length", "Yo.", "stop", 10, 100) == "length"
    assert pair_failure("Hi.", "stop", "Yo.", "length", 10, 100) == "length"
    assert pair_failure("Hi there and", "stop", "Yo.", "stop", 10, 100) == "unfinished"
    assert pair_failure("Hi.", "stop", "Yo.", "stop", 101, 100) == "too_long"
    assert replace_names("Teachy here; Teachy-bot and Teachyish stay.", ["Teachy"], "Stu") == \
        "Stu here; Stu-bot and Teachyish stay."


def test_pairs_filters_counts_names_and_provenance(tmp_path, monkeypatch, tiny_model_dir):
    import charter.stages.distill as d

    teacher, student = Scripted("big-teacher"), Scripted("small-student")
    monkeypatch.setattr(d, "_generators", lambda cfg: (teacher, student, teacher))
    cfg = DistillConfig(constitution=write_constitution(tmp_path), teacher={"kind": "hf", "model": "unused"},
                        student_name="Stu", samples=2, prompts_per_trait=3, expansion_rounds=0,
                        max_pair_tokens=200, tokenizer=str(tiny_model_dir))
    path = run_distill(cfg, tmp_path / "out", progress=False)
    pairs = read_jsonl(path)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["pairs"]
    # 6 prompts x 2 samples; each bad prompt fails exactly one filter on both samples
    assert summary == {"total": 12, "empty": 2, "no_think_end": 0, "length": 2, "unfinished": 2, "too_long": 2,
                       "kept": 4, "length_filter": "on"}
    assert len(pairs) == 4 and len({p["id"] for p in pairs}) == 4
    assert {p["prompt"][0]["content"] for p in pairs} == {"ok one?", "ok two?"}
    for p in pairs:
        assert [m["role"] for m in p["prompt"]] == ["user"]  # no system prompt stored
        assert p["chosen"][0]["content"] == "I am Stu. Stu likes you."  # teacher's self-name replaced
        assert p["rejected"][0]["content"] == "Sure."
        m = p["meta"]
        assert m["teacher"] == "big-teacher" and m["student"] == "small-student"
        assert m["constitution_hash"] == load_hash(cfg.constitution) and m["sampling"]["n"] == 2
    # the teacher saw the system prompt with the constitution's own name; the student saw none
    assert any(r.messages[0]["role"] == "system" and "You are Teachy" in r.messages[0]["content"] for r in teacher.calls)
    assert all(r.messages[0]["role"] == "user" for r in student.calls)
    # re-running generates nothing new; a different config may not reuse the folder (chunk_size may change)
    n_calls = len(teacher.calls)
    run_distill(cfg.model_copy(update={"chunk_size": 7}), tmp_path / "out", progress=False)
    assert len(teacher.calls) == n_calls
    from charter.config import ConfigError

    with pytest.raises(ConfigError, match="different distill config"):
        run_distill(cfg.model_copy(update={"samples": 3}), tmp_path / "out", progress=False)


def test_thinking_prefill_is_stripped_and_unclosed_samples_dropped(tmp_path, monkeypatch):
    import charter.stages.distill as d

    teacher, student = Scripted("t"), Scripted("s")
    monkeypatch.setattr(d, "_generators", lambda cfg: (teacher, student, teacher))
    cfg = DistillConfig(constitution=write_constitution(tmp_path), teacher={"kind": "hf", "model": "unused"},
                        samples=1, prompts_per_trait=3, expansion_rounds=0, think=True, max_pair_tokens=None)
    pairs = read_jsonl(run_distill(cfg, tmp_path / "out", progress=False))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["pairs"]
    assert summary["no_think_end"] == 3 and summary["kept"] == 2  # "empty?" is dropped as empty first
    assert all(p["chosen"][0]["content"] == "I am Teachy. Teachy likes you." for p in pairs)
    assert all("I am Teachy. The traits" in r.prefill for r in teacher.calls if r.messages[0]["role"] == "system")


def load_hash(path: str) -> str:
    from charter.constitution import load_constitution

    return load_constitution(path).hash()


def _records(out: Path) -> dict[str, dict[str, dict]]:
    """{file: {id: record}} for every store and output of a distill folder."""
    recs = {}
    for name in ("expansion", "prompts", "teacher", "student", "pairs"):
        rows = read_jsonl(out / f"{name}.jsonl") if (out / f"{name}.jsonl").exists() else []
        recs[name] = {r["id"]: r for r in rows}
        assert len(recs[name]) == len(rows), f"{name}: duplicate ids"
    return recs


def _assert_same_records(a: Path, b: Path, content: bool = True) -> None:
    """Same ids in every file; with `content`, every record is equal field for field (texts included)."""
    ra, rb = _records(a), _records(b)
    assert len(ra["teacher"]) > 0
    for name in ra:
        assert sorted(ra[name]) == sorted(rb[name]), name
        if content:
            diff = [i for i in ra[name] if ra[name][i] != rb[name][i]]
            assert not diff, f"{name}: {len(diff)} records differ from the uninterrupted run, e.g. {ra[name][diff[0]]} vs {rb[name][diff[0]]}"


def _drop_last_record(path: Path) -> None:
    """Remove the last stored record, so the chunk it belonged to is only partly written."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))


SMALL = {"prompts_per_trait": 4, "expansion_samples": 1, "expansion_rounds": 1, "samples": 2,
         "expansion_sampling": {"temperature": 1.0, "max_new_tokens": 16, "seed": 0},
         "sampling": {"temperature": 0.7, "max_new_tokens": 8, "seed": 0}}


def test_generate_into_resume_equals_uninterrupted_record_for_record(tmp_path, tiny_model_dir):
    """hf backend, sampled: records deleted anywhere (whole chunks, parts of chunks, one sample of a job)
    are regenerated to exactly the texts of the uninterrupted run; complete chunks are not regenerated."""
    from charter.backends import BackendConfig, make_generator
    from charter.backends.base import GenerationRequest, SamplingParams
    from charter.data.jsonl import RecordStore, stable_id
    from charter.stages.records import Job, generate_into

    gen = make_generator(BackendConfig(kind="hf", model=str(tiny_model_dir)))
    jobs = [Job(stable_id("q", i), GenerationRequest(messages=[{"role": "user", "content": f"question {i}?"}]),
                {"i": i}) for i in range(7)]
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=2, seed=3)
    with RecordStore(tmp_path / "full.jsonl") as store:
        assert generate_into(store, gen, jobs, params, chunk_size=3) == 14
    full = read_jsonl(tmp_path / "full.jsonl")
    assert len({r["text"] for r in full}) > 7  # really sampled: samples differ
    # keep chunk 0 whole, drop one sample of job 3 (chunk 1) and all of chunk 2 (job 6)
    kept = [r for r in full if not (r["i"] == 3 and r["sample"] == 1) and r["i"] != 6]
    (tmp_path / "cut.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(kept)))
    calls = []
    real = gen.generate
    gen.generate = lambda reqs, p, progress=False: calls.append(len(reqs)) or real(reqs, p)
    with RecordStore(tmp_path / "cut.jsonl") as store:
        assert generate_into(store, gen, jobs, params, chunk_size=3) == 3
        assert calls == [3, 1]  # chunk 1 (partly written) regenerated whole, chunk 2; chunk 0 skipped
        assert {r["id"]: r for r in full} == store.records


@pytest.mark.slow
def test_resume_after_kill_9_equals_uninterrupted_run(tmp_path, tiny_model_dir):
    """A subprocess running `charter distill` is SIGKILLed mid-generation (and a torn line is left behind);
    the re-run ends with exactly the records of an uninterrupted run, texts included: a chunk is
    seeded from its ids only, and a partly written chunk is regenerated with the same seed."""
    import yaml

    cfg = {"constitution": write_constitution(tmp_path), "teacher": {"kind": "hf", "model": str(tiny_model_dir)},
           **SMALL, "chunk_size": 2, "sampling": {"temperature": 0.7, "max_new_tokens": 24, "seed": 0}}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "charter.cli", "distill", str(tmp_path / "d.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    config = DistillConfig(**cfg)
    run_distill(config, tmp_path / "full", progress=False)
    proc = subprocess.Popen(cmd + ["-o", str(tmp_path / "cut")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    teacher = tmp_path / "cut" / "teacher.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (teacher.exists() and teacher.read_text().count("\n") >= 3):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = teacher.read_text().count("\n")
    assert 3 <= partial < 12, "kill landed mid-teacher"
    _drop_last_record(teacher)  # a chunk holds 2 prompts x 2 samples: now at least one is partly written
    with teacher.open("a") as f:
        f.write('{"id": "torn')  # what a kill in the middle of a write leaves behind
    run_distill(config, tmp_path / "cut", progress=False)
    _assert_same_records(tmp_path / "full", tmp_path / "cut")


@pytest.mark.slow
def test_fault_server_killed_mid_run_then_restarted(tmp_path, tiny_model_dir):
    """transformers serve is SIGKILLed while the teacher step runs; the run fails cleanly; a re-run that
    retries until the restarted server answers ends with the uninterrupted run's records, texts included
    (each request carries a seed derived from its chunk seed, and transformers serve reseeds torch with it)."""
    from charter.backends.openai import BackendError

    server = ServeProcess(tiny_model_dir, log_path=tmp_path / "serve.log").start()
    backend = {"kind": "openai", "model": server.model, "base_url": server.base_url, "dialect": "transformers",
               "concurrency": 1, "max_retries": 1, "timeout": 30, "tokenizer": str(tiny_model_dir)}
    base = dict(constitution=write_constitution(tmp_path), teacher=backend, **SMALL, chunk_size=1,
                max_pair_tokens=None)
    try:
        run_distill(DistillConfig(**base), tmp_path / "full", progress=False)

        errors: list[BaseException] = []

        def interrupted():
            try:
                run_distill(DistillConfig(**base), tmp_path / "cut", progress=False)
            except BaseException as e:  # expected: the server died
                errors.append(e)

        t = threading.Thread(target=interrupted)
        t.start()
        teacher = tmp_path / "cut" / "teacher.jsonl"
        while t.is_alive() and not (teacher.exists() and teacher.read_text().count("\n") >= 4):
            time.sleep(0.01)
        server.kill()
        t.join(timeout=120)
        assert errors and isinstance(errors[0], BackendError), errors
        assert not (tmp_path / "cut" / "pairs.jsonl").exists()

        # resume with patient retries while the server comes back
        patient = dict(base, teacher=dict(backend, max_retries=200, retry_max_wait=0.5))
        restarter = threading.Timer(0.2, server.start)
        restarter.start()
        run_distill(DistillConfig(**patient), tmp_path / "cut", progress=False)
        restarter.join()
    finally:
        server.kill()
    _assert_same_records(tmp_path / "full", tmp_path / "cut")


def test_general_prompts_files(tmp_path):
    from charter.data.jsonl import DataError
    from charter.stages.prompts import general_prompts

    lima = tmp_path / "lima.jsonl"
    lima.write_text('{"conversations": ["How do tides work?", "They..."], "source": "x"}\n'
                    '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi?"}]}\n'
                    '{"prompt": "Name a river."}\n')
    assert [p["prompt"] for p in general_prompts(str(lima))] == ["How do tides work?", "Hi?", "Name a river."]
    assert [p["source"] for p in general_prompts(str(lima), limit=1)] == ["general"]
    txt = tmp_path / "g.txt"
    txt.write_text("# comment\nFirst?\n\nSecond.\n")
    assert [p["prompt"] for p in general_prompts(str(txt))] == ["First?", "Second."]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"answer": "no prompt"}\n')
    with pytest.raises(DataError, match=f"{bad}:2: field 'prompt': no user prompt"):
        general_prompts(str(bad))
