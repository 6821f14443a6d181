"""Data parallel training: 2 processes x batch 2 == 1 process x batch 4 (CPU, gloo).

The 2-process run goes through ``softprompt train --nproc_per_node 2`` (torch.distributed's
environment, one process group set up by Accelerate); the 1-process run is the plain CLI. Same
seed, same data, same updates: the logged losses and the final prompt must agree to fp32 rounding,
and the output folder must hold one copy of each file (only rank 0 writes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from softprompt.cli import main
from tests.helpers import train_flags, write_alpaca_dataset

FILES = {"adapter_config.json", "adapter_model.safetensors", "checkpoint-2", "trainer_log.jsonl",
         "train_results.json", "training_args.yaml", "training_loss.png"}


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process_with_the_global_batch(tiny_dir, tmp_path):
    # 20 rows, 4 held out: 16 train = 2 updates per epoch of 4 x 2 accumulation; 3 updates cross an epoch.
    data = write_alpaca_dataset(tmp_path / "data", n=20)
    common = dict(max_steps=3, gradient_accumulation_steps=2, save_steps=2, val_size=4, eval_steps=2,
                  per_device_eval_batch_size=2, plot_loss="true", seed=7)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(train_flags(tiny_dir, data, one, per_device_train_batch_size=4, **common)) == 0

    argv = train_flags(tiny_dir, data, two, per_device_train_batch_size=2, **common) + ["--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    run = subprocess.run([sys.executable, "-m", "softprompt", *argv], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("saved ") == 1  # only rank 0 reports

    log1, log2 = _log(one), _log(two)
    assert len(log1) == len(log2)  # one line per event, not one per process
    losses1 = [r["loss"] for r in log1 if "loss" in r]
    losses2 = [r["loss"] for r in log2 if "loss" in r]
    assert len(losses1) == 3 and losses2 == losses1  # rounded to 4 decimals in the log
    evals1 = [r["eval_loss"] for r in log1 if "eval_loss" in r]
    assert evals1 and [r["eval_loss"] for r in log2 if "eval_loss" in r] == evals1
    grads1 = [r["grad_norm"] for r in log1 if "grad_norm" in r]
    assert [r["grad_norm"] for r in log2 if "grad_norm" in r] == grads1

    p1 = load_file(one / "adapter_model.safetensors")["prompt_embeddings"]
    p2 = load_file(two / "adapter_model.safetensors")["prompt_embeddings"]
    at_step_2 = load_file(two / "checkpoint-2" / "adapter_model.safetensors")["prompt_embeddings"]
    assert not torch.equal(at_step_2, p2)  # the prompt still moved in the last update
    torch.testing.assert_close(p2, p1, rtol=1e-5, atol=1e-6)

    assert {p.name for p in two.iterdir()} == FILES
    r1 = json.loads((one / "train_results.json").read_text())
    r2 = json.loads((two / "train_results.json").read_text())
    assert abs(r1["train_loss"] - r2["train_loss"]) < 1e-4 and r2["global_step"] == 3


def test_nproc_flag_is_checked_before_anything_starts(tmp_path, capsys):
    assert main(["train", "--nproc_per_node", "zero", "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--nproc_per_node" in err[0]
