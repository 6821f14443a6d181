"""Serve a softprompt soft prompt with vLLM, through vLLM's ``prompt_embeds`` input (offline ``LLM``).

Online, against ``vllm serve``: ``softprompt export --format vllm`` and ``examples/vllm_client.py``.

    softprompt export --adapter_name_or_path output/demo --format embeddings --output output/demo.safetensors
    python examples/vllm_prompt_embeds.py --model smollm2-135m-instruct --prompt output/demo.safetensors \
        --query "Which planet is known as the Red Planet?"

vLLM takes a request as ``{"prompt_embeds": tensor}`` with the tensor ``(sequence_length,
hidden_size)`` once the engine is built with ``LLM(model, enable_prompt_embeds=True)`` (online:
``vllm serve MODEL --enable-prompt-embeds`` and the Completions API's ``prompt_embeds`` field, base64).
A soft prompt is such a tensor's first ``L`` rows: put the exported ``prompt_embeds`` (L, d) in front
of the embeddings of the chat-formatted text's tokens, exactly where softprompt puts it (positions
0..L-1, then the text), and cast to the model's dtype.

``--no_vllm`` builds the same inputs and answers with transformers' ``generate(inputs_embeds=...)``
instead, on any machine (it is what this repository's tests check against softprompt's own engine).
Documented, not run here: vLLM needs a GPU build (``pip install vllm`` brings its own CUDA torch),
and the machine this was written on has no GPU.
"""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import load_file


def model_folder(name_or_path: str) -> str:
    """A plain Hugging Face folder for ``name_or_path``: softprompt's alias or a .gguf file is converted
    once (cached under ~/.cache/softprompt), since vLLM and transformers read such a folder directly."""
    from softprompt.model import convert_gguf, resolve_source

    path, gguf = resolve_source(name_or_path)
    return str(convert_gguf(gguf)) if gguf is not None else path


def build_prompt_embeds(soft_prompt: torch.Tensor, tokenizer, embedding: torch.nn.Module,
                        chats: list[list[dict]], dtype: torch.dtype) -> list[torch.Tensor]:
    """One ``(L + T_i, d)`` tensor per conversation: the soft prompt, then the formatted text's embeddings."""
    out = []
    for chat in chats:
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
        with torch.no_grad():
            text = embedding(torch.tensor(ids, dtype=torch.long))  # (T, d)
        out.append(torch.cat([soft_prompt.to(text.dtype), text], dim=0).to(dtype))  # (L + T, d)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="the base the prompt was trained on")
    p.add_argument("--prompt", required=True, help="file written by `softprompt export --format embeddings`")
    p.add_argument("--query", action="append", required=True, help="a user message (repeat for a batch)")
    p.add_argument("--max_tokens", type=int, default=64)
    p.add_argument("--no_vllm", action="store_true", help="answer with transformers instead (no GPU needed)")
    args = p.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_folder(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder)  # only its embedding table is needed with vLLM
    loaded = load_file(args.prompt) if args.prompt.endswith(".safetensors") else {"prompt_embeds": torch.load(args.prompt)}
    soft_prompt = loaded["prompt_embeds"]  # (L, d)
    chats = [[{"role": "user", "content": q}] for q in args.query]

    if args.no_vllm:
        embeds = build_prompt_embeds(soft_prompt, tokenizer, hf.get_input_embeddings(), chats, hf.dtype)
        for q, e in zip(args.query, embeds):
            out = hf.generate(inputs_embeds=e[None], attention_mask=torch.ones(1, e.shape[0], dtype=torch.long),
                              max_new_tokens=args.max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            print(f"{q}\n-> {tokenizer.decode(out[0], skip_special_tokens=True)}")
        return

    from vllm import LLM, SamplingParams

    llm = LLM(model=folder, enable_prompt_embeds=True)
    dtype = llm.llm_engine.model_config.dtype
    embeds = build_prompt_embeds(soft_prompt, tokenizer, hf.get_input_embeddings(), chats, dtype)
    outputs = llm.generate([{"prompt_embeds": e} for e in embeds], SamplingParams(temperature=0.0,
                                                                                  max_tokens=args.max_tokens))
    for q, o in zip(args.query, outputs):
        print(f"{q}\n-> {o.outputs[0].text}")


if __name__ == "__main__":
    main()
