"""Several processes on one machine (CPU, gloo): 2 processes x batch 2 == 1 process x batch 4.

The 2-process runs go through ``softprompt train --nproc_per_node 2`` (torch.distributed's
environment, one process group set up by Accelerate); the 1-process reference is the plain CLI.
Same seed, same data, same updates: the logged losses and the final prompt must agree to fp32
rounding, and the output folder must hold one copy of each file (only rank 0 writes). Once with
data parallel alone (DDP), once with the frozen base sharded (``--fsdp full_shard``, FSDP2).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from softprompt.cli import main
from tests.helpers import train_flags, write_alpaca_dataset

FILES = {"adapter_config.json", "adapter_model.safetensors", "checkpoint-2", "trainer_log.jsonl",
         "train_results.json", "training_args.yaml", "training_loss.png", ".softprompt_outputs.json"}
# 20 rows, 4 held out: 16 train = 2 updates per epoch of 4 x 2 accumulation; 3 updates cross an epoch.
COMMON = dict(max_steps=3, gradient_accumulation_steps=2, save_steps=2, val_size=4, eval_steps=2,
              per_device_eval_batch_size=2, plot_loss="true", seed=7)


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]


def _prompt(out):
    return load_file(out / "adapter_model.safetensors")["prompt_embeddings"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_alpaca_dataset(tmp_path_factory.mktemp("mp") / "data", n=20)


@pytest.fixture(scope="module")
def reference(tiny_dir, data, tmp_path_factory):
    """One process, batch 4."""
    out = tmp_path_factory.mktemp("mp") / "one"
    assert main(train_flags(tiny_dir, data, out, per_device_train_batch_size=4, **COMMON)) == 0
    return out


def _launch(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    """``softprompt <argv> --nproc_per_node 2`` in a fresh process, outside any launcher of the test run."""
    base = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return subprocess.run([sys.executable, "-m", "softprompt", *argv, "--nproc_per_node", "2"],
                          env={**base, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True, timeout=300)


def _two_processes(tiny_dir, data, out, *extra: str) -> subprocess.CompletedProcess:
    run = _launch(train_flags(tiny_dir, data, out, per_device_train_batch_size=2, **COMMON) + list(extra))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("saved ") == 1  # only rank 0 reports
    return run


def _same_run(one, two) -> None:
    log1, log2 = _log(one), _log(two)
    assert len(log1) == len(log2)  # one line per event, not one per process
    for key in ("loss", "eval_loss", "grad_norm"):  # rounded to 4 decimals in the log
        values = [r[key] for r in log1 if key in r]
        assert values and [r[key] for r in log2 if key in r] == values, key
    at_step_2 = load_file(two / "checkpoint-2" / "adapter_model.safetensors")["prompt_embeddings"]
    assert not torch.equal(at_step_2, _prompt(two))  # the prompt still moved in the last update
    torch.testing.assert_close(_prompt(two), _prompt(one), rtol=1e-5, atol=1e-6)
    assert {p.name for p in two.iterdir()} == FILES
    r1, r2 = (json.loads((o / "train_results.json").read_text()) for o in (one, two))
    assert abs(r1["train_loss"] - r2["train_loss"]) < 1e-4 and r2["global_step"] == 3


def test_data_parallel_matches_one_process_with_the_global_batch(tiny_dir, data, reference, tmp_path):
    _two_processes(tiny_dir, data, tmp_path / "two")
    _same_run(reference, tmp_path / "two")


def test_sharded_base_matches_one_process(tiny_dir, data, reference, tmp_path):
    run = _two_processes(tiny_dir, data, tmp_path / "fsdp", "--fsdp", "full_shard")
    # each process holds half of every decoder layer (the embeddings and LM head of the tiny model stay whole)
    assert "2 decoder layers sharded over 2 processes" in run.stderr
    _same_run(reference, tmp_path / "fsdp")


def test_zero3_partitioned_base_matches_one_process(tiny_dir, data, reference, tmp_path):
    pytest.importorskip("deepspeed", reason="deepspeed is installed by make setup")
    config = tmp_path / "ds_z3.json"  # LLaMA-Factory's ds_z3_config.json, with every parameter partitioned
    config.write_text(json.dumps({
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "zero_allow_untested_optimizer": True, "bf16": {"enabled": "auto"},
        "zero_optimization": {"stage": 3, "overlap_comm": False, "contiguous_gradients": True,
                              "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                              "stage3_param_persistence_threshold": 0,
                              "stage3_gather_16bit_weights_on_model_save": True},
    }))
    run = _two_processes(tiny_dir, data, tmp_path / "z3", "--deepspeed", str(config))
    assert "the weights of over 0 elements partitioned by ZeRO-3 over 2 processes" in run.stderr
    held = re.search(r"each holds ([\d.]+) MB of the base's ([\d.]+) MB", run.stderr)
    assert held and float(held[1]) < 0.6 * float(held[2])  # about half of every weight on each process
    _same_run(reference, tmp_path / "z3")


@pytest.mark.parametrize("plugin, name", [("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")])
def test_accelerate_plugins_are_refused_in_one_line_even_where_accelerate_drops_them(tiny_dir, data, tmp_path,
                                                                                     plugin, name):
    """On a CPU Accelerate ignores its FSDP / DeepSpeed plugin and runs plain data parallel without a word;
    softprompt says the plugin is not the way (once, from rank 0, though every rank fails) and writes nothing."""
    run = _launch(train_flags(tiny_dir, data, tmp_path / "o", per_device_train_batch_size=2, max_steps=1),
                  **{plugin: "true"})
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"Accelerate's {name} plugin would" in errors[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr and not (tmp_path / "o").exists()


def test_nproc_fsdp_and_deepspeed_flags_are_checked_before_anything_starts(tmp_path, capsys):
    stage2, broken = tmp_path / "z2.json", tmp_path / "broken.json"
    stage2.write_text('{"zero_optimization": {"stage": 2}}')
    broken.write_text('{"zero_optimization": ')
    cases = [(["--nproc_per_node", "zero"], "--nproc_per_node must be a positive number"),
             (["--fsdp", "shard_grad_op"], "supported is 'full_shard'"),
             (["--deepspeed", str(tmp_path / "none.json")], "none.json: file not found"),
             (["--deepspeed", str(broken)], "broken.json: not a JSON file"),
             (["--deepspeed", str(stage2)], "zero_optimization.stage is 2; softprompt uses DeepSpeed to partition"),
             (["--deepspeed", str(stage2), "--fsdp", "full_shard"], "--fsdp and --deepspeed both shard the base")]
    for flags, expected in cases:
        assert main(["train", *flags, "--output_dir", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (flags, err)
    assert not (tmp_path / "o").exists()


def test_launch_flags_and_a_lone_accelerate_process(monkeypatch):
    from softprompt.launch import lone_accelerate_process, pop_nproc

    assert pop_nproc(["--a", "1", "--nproc_per_node=3", "--b"]) == (3, ["--a", "1", "--b"])
    assert pop_nproc(["--nproc_per_node", "2", "x.yaml"]) == (2, ["x.yaml"])
    assert pop_nproc(["x.yaml"]) == (1, ["x.yaml"])
    for name in ("ACCELERATE_USE_CPU", "MASTER_ADDR", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert not lone_accelerate_process()
    # `accelerate launch --num_processes 2` on a machine without GPUs: one process, a group address, no world size
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert lone_accelerate_process()
    monkeypatch.setenv("WORLD_SIZE", "2")  # `--multi_gpu`: torchrun started them all
    assert not lone_accelerate_process()
