"""`softprompt export --format embeddings`: the prompt as a plain (L, d) tensor file.

The file must hold exactly the adapter's prompt, and putting it in front of the text's token
embeddings (``inputs_embeds``, what vLLM's ``prompt_embeds`` does) must give the logits of
softprompt's own prefix path.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from softprompt.checkpoint import write_adapter_files
from softprompt.cli import main
from softprompt.config import MethodArgs
from softprompt.engine.forward import decoder_hidden, prefix_of
from softprompt.methods import METHODS


@pytest.fixture(scope="module")
def base(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir).requires_grad_(False).eval()


def _saved(method: str, base, folder, L: int = 5):
    adapter = METHODS[method].create(base, None, MethodArgs(finetuning_type=method, num_virtual_tokens=L),
                                     torch.Generator().manual_seed(3))
    with torch.no_grad():
        adapter.embedding.weight.normal_(0, 1.0)
    write_adapter_files(folder, adapter.adapter_state(), adapter.adapter_config("tiny", base))
    return adapter


def _export(adapter_dir, output, *extra) -> None:
    assert main(["export", "--adapter_name_or_path", str(adapter_dir), "--format", "embeddings",
                 "--output", str(output), *extra]) == 0


def test_prompt_tuning_exports_its_embeddings_and_they_give_the_prefix_paths_logits(base, tmp_path):
    prompt = _saved("prompt_tuning", base, tmp_path / "pt")
    _export(tmp_path / "pt", tmp_path / "prompt.safetensors")
    embeds = load_file(tmp_path / "prompt.safetensors")["prompt_embeds"]
    assert embeds.dtype == torch.float32 and torch.equal(embeds, prompt.embedding.weight.detach())
    with safe_open(str(tmp_path / "prompt.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["peft_type"] == "PROMPT_TUNING" and meta["num_virtual_tokens"] == "5" and meta["token_dim"] == "64"

    ids = torch.randint(3, 300, (1, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # what an engine does with prompt_embeds: [soft prompt; token embeddings] as one input, positions 0..L+T-1
        inputs = torch.cat([embeds[None], base.get_input_embeddings()(ids)], dim=1)  # (1, L + T, d)
        theirs = base(inputs_embeds=inputs).logits[:, embeds.shape[0]:]  # (1, T, V)
        hidden = decoder_hidden(base, ids, torch.ones_like(ids), prefix_of(base, prompt))
        ours = base.get_output_embeddings()(hidden)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


def test_p_tuning_exports_the_encoded_prompt_and_pt_files_load_with_torch(base, tmp_path):
    adapter = _saved("p_tuning", base, tmp_path / "ptun", L=4)
    _export(tmp_path / "ptun", tmp_path / "prompt.pt", "--dtype", "bf16")
    embeds = torch.load(tmp_path / "prompt.pt", weights_only=True)
    assert embeds.shape == (4, 64) and embeds.dtype == torch.bfloat16
    with torch.no_grad():
        encoded = adapter.prompt_embeds()  # through the MLP encoder: not the raw embedding table
    assert not torch.allclose(encoded, adapter.embedding.weight)
    torch.testing.assert_close(embeds.float(), encoded.bfloat16().float())


def test_prefix_tuning_and_bad_outputs_are_refused_in_one_line(base, tmp_path, capsys):
    _saved("prefix_tuning", base, tmp_path / "prefix")
    assert main(["export", "--adapter_name_or_path", str(tmp_path / "prefix"), "--output",
                 str(tmp_path / "p.safetensors")]) == 2
    _saved("prompt_tuning", base, tmp_path / "pt")
    assert main(["export", "--adapter_name_or_path", str(tmp_path / "pt"), "--output", str(tmp_path / "p.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "prefix_tuning" in err[0] and "keys and values" in err[0] and ".pt" in err[1]
    assert not (tmp_path / "p.safetensors").exists()
