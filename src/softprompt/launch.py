"""``softprompt train --nproc_per_node N``: start N training processes on this machine.

The same as ``torchrun --standalone --nproc_per_node N -m softprompt train ...``: each child gets
torch.distributed's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT`` on a free local port) and Accelerate, inside the training loop, joins them into one
process group (gloo on a CPU, NCCL on GPUs). When one process fails the others are stopped, so a
run never hangs in a collective waiting for a rank that is gone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from softprompt.arguments import split_args
from softprompt.command_args import LaunchArgs


def pop_nproc(argv: list[str]) -> tuple[int, list[str]]:
    """``(N, argv without --nproc_per_node N)``, the rest as given for the children; N is 1 when the flag
    is absent."""
    (launch,), rest = split_args(argv, [LaunchArgs])
    return launch.nproc_per_node, rest


def launched() -> bool:
    """Whether this process is already one of several (torchrun, accelerate launch, this launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def lone_accelerate_process() -> bool:
    """``accelerate launch --num_processes N`` (N > 1) without ``--multi_gpu`` on a machine without GPUs:
    Accelerate's simple launcher started this single process (its CPU multi-process path is mpirun),
    setting MASTER_ADDR for the group but no WORLD_SIZE."""
    return "ACCELERATE_USE_CPU" in os.environ and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ


def is_main_process() -> bool:
    """Rank 0, or a run with no launcher at all."""
    return os.environ.get("RANK", "0") == "0"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relaunch(command: str, argv: list[str], nproc: int) -> int:
    """Run ``softprompt <command> <argv>`` in ``nproc`` processes; the first non-zero exit code, else 0."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)}
    cmd = [sys.executable, "-m", "softprompt", command, *argv]
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(nproc)]
    code = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed:
                code = failed[0]
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        code = 130
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
    return code or next((p.returncode for p in procs if p.returncode), 0)
