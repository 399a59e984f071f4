"""examples/accelerate/*.yaml: accelerate itself reads each file as the strategy it claims.

Nothing is launched: we run accelerate's own config loader, then the step of `accelerate launch`
that turns a config file into launch arguments (`_validate_launch_command`), so a typo'd key or
a wrong enum fails here instead of on a GPU cluster.
"""
from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "accelerate"

# file -> (distributed type, the launch flag it must switch on, plugin-specific settings)
EXPECTED = {
    "ddp.yaml": ("MULTI_GPU", "multi_gpu", {}),
    "fsdp.yaml": ("FSDP", "use_fsdp", {"fsdp_version": 2, "fsdp_state_dict_type": "FULL_STATE_DICT",
                                      "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}),
    "deepspeed_zero2.yaml": ("DEEPSPEED", "use_deepspeed", {"zero_stage": 2}),
}
STRATEGY_FLAGS = ("multi_gpu", "use_fsdp", "use_deepspeed", "tpu", "use_megatron_lm")


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_as_declared_strategy(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import ComputeEnvironment, DistributedType

    cfg = load_config_from_file(str(EXAMPLES / name))
    dist, _flag, plugin = EXPECTED[name]
    assert isinstance(cfg, ClusterConfig)
    assert cfg.compute_environment == ComputeEnvironment.LOCAL_MACHINE
    assert cfg.distributed_type == DistributedType[dist]
    assert cfg.mixed_precision == "bf16" and cfg.downcast_bf16 == "no" and cfg.use_cpu is False
    assert cfg.num_machines == 1 and cfg.num_processes >= 2
    # only the plugin section of the chosen strategy is filled
    assert bool(cfg.fsdp_config) == (dist == "FSDP")
    assert bool(cfg.deepspeed_config) == (dist == "DEEPSPEED")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launch_reads_config_into_intended_arguments(name):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    args, cfg, _ = _validate_launch_command(parser.parse_args(["--config_file", str(EXAMPLES / name), "train.py"]))
    _dist, flag, plugin = EXPECTED[name]
    assert [f for f in STRATEGY_FLAGS if getattr(args, f)] == [flag]
    assert args.mixed_precision == "bf16" and args.num_processes == cfg.num_processes
    for key, value in plugin.items():
        assert getattr(args, key) == value, key
    # every plugin key is one `accelerate launch` knows (unknown keys would be silently ignored)
    known = {a.dest for a in parser._actions}
    keys = [k if k.startswith("fsdp") else f"fsdp_{k}" for k in cfg.fsdp_config] + list(cfg.deepspeed_config)
    assert [k for k in keys if k not in known] == []


def test_deepspeed_leaves_accumulation_and_clipping_to_charter():
    """README promise: these stay "auto", so Charter's training config decides them."""
    from accelerate.commands.config.config_args import load_config_from_file

    ds = load_config_from_file(str(EXAMPLES / "deepspeed_zero2.yaml")).deepspeed_config
    assert "gradient_accumulation_steps" not in ds and "gradient_clipping" not in ds
    assert ds["offload_optimizer_device"] == "none" and ds["offload_param_device"] == "none"
