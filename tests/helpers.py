"""Small builders shared by tests: datasets on disk, CLI runs, a real server process."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

KEY = "test-key-123"

QA = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Give three tips for staying healthy.", "Eat well, sleep, exercise."),
    ("Translate to French: good morning.", "Bonjour."),
    ("Is this movie great?", "positive"),
    ("Was that film awful?", "negative"),
    ("Count to three.", "1 2 3"),
    ("What is 2 + 2?", "4"),
    ("Name a color.", "blue"),
]


def write_alpaca_dataset(folder: Path, name: str = "toy", n: int = 16) -> Path:
    """An alpaca JSON dataset of ``n`` rows plus its dataset_info.json; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"instruction": QA[i % len(QA)][0], "input": "" if i % 3 else "extra input",
             "output": QA[i % len(QA)][1]} for i in range(n)]
    (folder / f"{name}.json").write_text(json.dumps(rows))
    info_path = folder / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[name] = {"file_name": f"{name}.json"}
    info_path.write_text(json.dumps(info))
    return folder


def train_peft_and_save(peft_model, folder: Path, steps: int = 2):
    """A few AdamW steps of a PEFT model on random tokens (so its adapter is not its initial value), saved
    with ``save_pretrained`` to ``folder``; returns the model in eval mode."""
    import torch

    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(3, 300, (2, 10))
    for _ in range(steps):
        peft_model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.save_pretrained(folder)
    return peft_model.eval()


def assert_greedy_equals_predictions(model, tok, rows: list[dict], max_new_tokens: int) -> None:
    """A transformers / PEFT ``model`` generates greedily, from each row's ``prompt`` of a
    generated_predictions.jsonl, exactly the row's ``predict`` (which must not be empty)."""
    import torch

    for row in rows:
        ids = tok(row["prompt"], add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        assert tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True) == row["predict"], row["prompt"]
        assert row["predict"]


def train_flags(model: Path, data_dir: Path, out: Path, **extra) -> list[str]:
    flags = {
        "model_name_or_path": str(model), "dataset": "toy", "dataset_dir": str(data_dir),
        "finetuning_type": "prompt_tuning", "num_virtual_tokens": 4, "output_dir": str(out),
        "per_device_train_batch_size": 4, "learning_rate": 1e-2, "max_steps": 2,
        "logging_steps": 1, "save_steps": 0, "plot_loss": "false",
    }
    flags.update({k: str(v) for k, v in extra.items()})
    argv = ["train"]
    for k, v in flags.items():
        argv += [f"--{k}", str(v)]
    return argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``softprompt serve`` in a subprocess on a free port, waited for until /health answers.

    Its stdout and stderr go to a pipe (``proc.stdout``), or to the file ``log`` when given (a
    busy server could fill a pipe nobody reads).
    """

    def __init__(self, model: Path, prompts: Path, *extra: str, api_key: str | None = KEY, log: Path | None = None):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "softprompt", "serve", "--model_name_or_path", str(model),
               "--prompts_dir", str(prompts), "--port", str(self.port), *extra]
        if api_key:
            cmd += ["--api_key", api_key]
        self.log_path = log
        self.log = open(log, "w") if log is not None else None  # noqa: SIM115 (closed in close())
        out = self.log or subprocess.PIPE
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def output(self) -> str:
        if self.log_path is not None:
            return self.log_path.read_text()  # the server process writes the file itself
        return self.proc.stdout.read()

    def client(self, key: str | None = KEY, async_: bool = False):
        import openai

        cls = openai.AsyncOpenAI if async_ else openai.OpenAI
        return cls(base_url=self.url + "/v1", api_key=key or "none", max_retries=0, timeout=120)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.log is not None:
            self.log.close()
