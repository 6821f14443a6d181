"""Write one untrained soft prompt per --prompt_tuning_init, as softprompt train would start it, so that
`softprompt eval` can score where each initialisation starts (before any update).

    .venv/bin/python bench/prompt_inits.py --dataset sst2_train --dataset_dir ../shared/datasets \
        --num_virtual_tokens 20 --inits random,sample_vocab,text,label --out output/inits
    softprompt eval --adapter_name_or_path none,output/inits/random,... --dataset sst2_dev \
        --dataset_dir ../shared/datasets --max_samples 200 --task classification --output_dir output/inits-eval
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from softprompt import methods
from softprompt.config import DataArgs, MethodArgs
from softprompt.data import load_conversations
from softprompt.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default="smollm2-135m-instruct")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--dataset_dir", default="../shared/datasets")
    parser.add_argument("--max_samples", type=int, default=512)
    parser.add_argument("--num_virtual_tokens", type=int, default=20)
    parser.add_argument("--inits", default="random,sample_vocab,text,label")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="output/inits")
    a = parser.parse_args()
    lm = load_model(a.model_name_or_path)
    data_args = DataArgs(dataset=a.dataset, dataset_dir=a.dataset_dir, max_samples=a.max_samples)
    data = methods.TaskData(lambda: load_conversations(data_args, a.seed))
    spec = methods.get("prompt_tuning")
    for init in a.inits.split(","):
        args = dataclasses.replace(MethodArgs(), num_virtual_tokens=a.num_virtual_tokens, prompt_tuning_init=init)
        module = spec.create(lm.model, lm.tokenizer, args, torch.Generator().manual_seed(a.seed), data)
        methods.save_adapter(module, Path(a.out) / init, lm.name, lm.model)
        print(f"wrote {Path(a.out) / init}")


if __name__ == "__main__":
    main()
