"""Small builders shared by tests: datasets on disk and CLI runs."""

from __future__ import annotations

import json
from pathlib import Path

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
