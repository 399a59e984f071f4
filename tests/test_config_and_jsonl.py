import json
import os

import pytest
from pydantic import BaseModel

from charter.config import Config, ConfigError, load_config
from charter.data.jsonl import DataError, RecordStore, read_jsonl, stable_id


class Optim(Config):
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


class Run(Config):
    name: str = "x"
    steps: int = 10
    optim: Optim = Optim()


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: a\noptim:\n  lr: 0.1\n")
    cfg = load_config(Run, p, ["steps=3", "optim.lr=5e-5", "optim.betas=[0.9,0.98]"])
    assert (cfg.name, cfg.steps, cfg.optim.lr, cfg.optim.betas) == ("a", 3, 5e-5, (0.9, 0.98))


def test_unknown_key_and_bad_type_name_the_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("nmae: a\n")
    with pytest.raises(ConfigError, match="nmae"):
        load_config(Run, p)
    with pytest.raises(ConfigError, match="steps"):
        load_config(Run, None, ["steps=many"])


def test_invalid_yaml_names_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: a\nsteps: [1,\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+"):
        load_config(Run, p)


def test_config_hash_changes_with_content():
    assert Run().hash() == Run().hash()
    assert Run().hash() != Run(steps=11).hash()


def test_record_store_resumes_after_torn_write(tmp_path):
    p = tmp_path / "r.jsonl"
    with RecordStore(p) as s:
        for i in range(3):
            assert s.add({"id": stable_id(i), "v": i})
        assert not s.add({"id": stable_id(0), "v": 99})  # duplicate id skipped
    with p.open("a") as f:  # a kill -9 mid-write leaves a partial line
        f.write('{"id": "abc", "v":')
    with RecordStore(p) as s:
        assert s.repaired and len(s) == 3
        s.add({"id": stable_id(3), "v": 3})
    rows = read_jsonl(p)
    assert [r["v"] for r in rows] == [0, 1, 2, 3]


def test_read_jsonl_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": 1}\n[1]\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: expected a JSON object"):
        read_jsonl(p)
    p.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        read_jsonl(p)
