"""Ask a vLLM server with a softprompt soft prompt, through the Completions API's ``prompt_embeds`` field.

    softprompt export --adapter_name_or_path output/demo --format vllm --output output/demo-vllm
    vllm serve MODEL_FOLDER --enable-prompt-embeds --dtype DTYPE     # the "serve" line of softprompt_vllm.json
    python examples/vllm_client.py --export output/demo-vllm --query "Which planet is known as the Red Planet?"

The export folder holds ``prompt_embeds.pt`` (the soft prompt, ``(L, hidden_size)`` in the base's
dtype) and ``softprompt_vllm.json`` (the base's folder, which vLLM serves and whose tokenizer and
embedding table this client reads; the dtype; the serve command). For each query this client:

1. formats the chat with the base's own chat template and tokenizes it (the ids softprompt would use);
2. embeds those ids with the base's input-embedding table, read alone from its safetensors files;
3. puts the soft prompt in front: ``(L + T, hidden_size)``, cast to the export's dtype;
4. sends ``torch.save`` of that tensor, base64-encoded, as ``prompt_embeds`` with ``prompt=""``
   (the openai client passes it through ``extra_body``), as vLLM documents for its Completions API.

vLLM's Completions API applies no chat template to ``prompt_embeds``: step 1 does it here. Needs
torch, transformers, safetensors and openai, not softprompt. Written against vLLM's documented
contract; not run against a vLLM server here (vLLM needs a GPU build, and none was at hand):
``tests/unit/test_export_vllm.py`` checks each step against softprompt's own engine.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_export(folder: str | Path) -> tuple[dict, torch.Tensor]:
    """The export's facts (softprompt_vllm.json) and its soft prompt ``(L, hidden_size)``."""
    folder = Path(folder)
    info = json.loads((folder / "softprompt_vllm.json").read_text(encoding="utf-8"))
    prompt = torch.load(folder / info["prompt_embeds"], weights_only=True)
    assert prompt.shape == (info["num_virtual_tokens"], info["hidden_size"]), prompt.shape
    return info, prompt


def embedding_table(model_folder: str) -> torch.Tensor:
    """The base's input-embedding matrix ``(vocab_size, hidden_size)``, read alone from its safetensors
    files when it can be (a 7B model's table is ~0.5 GB of its ~14 GB); else from the loaded model."""
    folder = Path(model_folder)
    with torch.device("meta"):  # the module tree only, no memory: to learn the table's parameter name
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_folder))
    table = model.get_input_embeddings()
    name = next(n for n, m in model.named_modules() if m is table) + ".weight"
    index = folder / "model.safetensors.index.json"
    shard = (json.loads(index.read_text())["weight_map"].get(name) if index.is_file() else "model.safetensors")
    if shard and (folder / shard).is_file():
        with safe_open(str(folder / shard), "pt") as f:
            if name in f.keys():
                return f.get_tensor(name)
    return AutoModelForCausalLM.from_pretrained(model_folder).get_input_embeddings().weight.detach()


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The chat-formatted token ids, ready for the answer (the base's own chat template)."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=False))


def request_embeds(prompt: torch.Tensor, table: torch.Tensor, ids: list[int], dtype: torch.dtype) -> torch.Tensor:
    """``(L + T, hidden_size)``: the soft prompt ``(L, d)``, then the embeddings of the ``T`` token ids."""
    text = table[torch.tensor(ids, dtype=torch.long)]  # (T, d)
    return torch.cat([prompt.to(text.dtype), text], dim=0).to(dtype)  # (L + T, d)


def encode(embeds: torch.Tensor) -> str:
    """What vLLM's ``prompt_embeds`` field takes: base64 of ``torch.save`` of the tensor."""
    buffer = io.BytesIO()
    torch.save(embeds.contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def complete(client, info: dict, embeds: torch.Tensor, max_tokens: int = 64, temperature: float = 0.0):
    """One Completions request carrying ``embeds``; returns the openai client's Completion."""
    return client.completions.create(model=info["model_folder"], prompt="", max_tokens=max_tokens,
                                     temperature=temperature, extra_body={"prompt_embeds": encode(embeds)})


def main() -> None:
    from openai import OpenAI

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", required=True, help="folder written by `softprompt export --format vllm`")
    p.add_argument("--query", action="append", required=True, help="a user message (repeat for several)")
    p.add_argument("--base_url", default="http://127.0.0.1:8000/v1", help="the vLLM server's OpenAI API")
    p.add_argument("--api_key", default="EMPTY", help="vllm serve --api-key, if it was given one")
    p.add_argument("--max_tokens", type=int, default=64)
    args = p.parse_args()

    info, prompt = load_export(args.export)
    tokenizer = AutoTokenizer.from_pretrained(info["model_folder"])
    table = embedding_table(info["model_folder"])
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    for query in args.query:
        embeds = request_embeds(prompt, table, chat_ids(tokenizer, [{"role": "user", "content": query}]),
                                DTYPES[info["dtype"]])
        print(f"{query}\n-> {complete(client, info, embeds, args.max_tokens).choices[0].text}")


if __name__ == "__main__":
    main()
