"""--prompt_tuning_reparam residual (Residual Prompt Tuning): the prompt trains through a shared bottleneck MLP with
a skip connection; what is saved is the result, a plain PROMPT_TUNING adapter that real peft loads."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from softprompt.cli import main
from softprompt.config import MethodArgs
from softprompt.engine.forward import decoder_hidden
from softprompt.inference import Predictor
from softprompt.methods import METHODS
from tests.helpers import train_flags, write_alpaca_dataset

RESIDUAL = dict(prompt_tuning_reparam="residual", reparam_hidden_size=16)


def reparameterised(state: dict[str, torch.Tensor], prefix: str = "adapter.") -> torch.Tensor:
    """The paper's P + LayerNorm(up(ReLU(down(P)))), (L, d), written out from a state dict's tensors."""
    p = state[prefix + "embedding.weight"]
    h = F.relu(p @ state[prefix + "reparam.down.weight"].T + state[prefix + "reparam.down.bias"])
    h = h @ state[prefix + "reparam.up.weight"].T + state[prefix + "reparam.up.bias"]
    return p + F.layer_norm(h, (p.shape[1],), state[prefix + "reparam.norm.weight"], state[prefix + "reparam.norm.bias"])


def test_the_module_starts_at_its_prompt_then_follows_the_paper(tiny_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    args = MethodArgs(num_virtual_tokens=5, prompt_tuning_init="sample_vocab", **RESIDUAL)
    module = METHODS["prompt_tuning"].create(base, tok, args, torch.Generator().manual_seed(0))
    plain = METHODS["prompt_tuning"].create(base, tok, MethodArgs(num_virtual_tokens=5, prompt_tuning_init="sample_vocab"),
                                            torch.Generator().manual_seed(0))
    assert torch.equal(module.embedding.weight, plain.embedding.weight)  # the same init, the same generator draws
    assert torch.equal(module.prompt_embeds(), module.embedding.weight)  # LayerNorm gain 0: P' = P at the start
    assert {n for n, _ in module.named_parameters()} == {"embedding.weight", "reparam.down.weight", "reparam.down.bias",
                                                          "reparam.up.weight", "reparam.up.bias", "reparam.norm.weight",
                                                          "reparam.norm.bias"}
    assert module.reparam.down.weight.shape == (16, 64) and module.reparam.up.weight.shape == (64, 16)
    with torch.no_grad():
        module.reparam.norm.weight.fill_(0.5)
    state = {k: v.detach() for k, v in module.state_dict().items()}
    torch.testing.assert_close(module.prompt_embeds(), reparameterised(state, ""))
    torch.testing.assert_close(module.adapter_state()["prompt_embeddings"], reparameterised(state, ""))
    weights = torch.randn(module.prompt_embeds().shape, generator=torch.Generator().manual_seed(1))
    (module.prompt_embeds() * weights).sum().backward()  # one graph: the prompt and every MLP weight get a gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("reparam")
    data = write_alpaca_dataset(root / "data")
    out = root / "out"
    assert main(train_flags(tiny_dir, data, out, num_virtual_tokens=6, max_steps=3, save_steps=2, learning_rate=0.1,
                            **RESIDUAL)) == 0
    return out


def test_the_saved_adapter_is_the_reparameterised_prompt(trained):
    config = json.loads((trained / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 6
    ckpt = trained / "checkpoint-2"
    saved = load_file(ckpt / "adapter_model.safetensors")
    assert list(saved) == ["prompt_embeddings"]  # the MLP is not in the adapter ...
    state = torch.load(ckpt / "trainable_state.pt", weights_only=True)["params"]  # ... but in the training state
    assert state["adapter.reparam.norm.weight"].abs().sum() > 0  # the residual branch trained
    torch.testing.assert_close(saved["prompt_embeddings"], reparameterised(state))
    assert not torch.allclose(saved["prompt_embeddings"], state["adapter.embedding.weight"])


def test_peft_loads_it_and_gives_the_same_logits(tiny_dir, trained):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    peft_model = PeftModel.from_pretrained(base, str(trained)).eval()
    predictor = Predictor.load(str(tiny_dir), str(trained))
    prompt = predictor.prompt_ids([{"role": "user", "content": "Name a color."}])
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.tensor([prompt])).logits[0, -1]
        hidden = decoder_hidden(predictor.lm.model, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long),
                                predictor.prefix)
        ours = predictor.lm.model.get_output_embeddings()(hidden[0, -1])
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_other_methods_are_warned_off_the_reparam_flags(tiny_dir, tmp_path, caplog):
    data = write_alpaca_dataset(tmp_path / "data")
    with caplog.at_level(logging.WARNING, logger="softprompt"):
        assert main(train_flags(tiny_dir, data, tmp_path / "o", finetuning_type="p_tuning", max_steps=1,
                                **RESIDUAL)) == 0
    assert "--prompt_tuning_reparam does not apply to --finetuning_type p_tuning; ignored" in caplog.text


def test_a_saved_prompt_continues_with_a_new_mlp(tiny_dir, trained, tmp_path):
    data = write_alpaca_dataset(tmp_path / "data")
    out = tmp_path / "more"
    argv = train_flags(tiny_dir, data, out, adapter_name_or_path=str(trained), max_steps=2, save_steps=1,
                       **RESIDUAL)
    at = argv.index("--num_virtual_tokens")
    assert main(argv[:at] + argv[at + 2:]) == 0
    state = torch.load(out / "checkpoint-1" / "trainable_state.pt", weights_only=True)["params"]
    assert state["adapter.reparam.down.weight"].shape == (16, 64)  # the saved P' trains on through a new MLP
    before = load_file(trained / "adapter_model.safetensors")["prompt_embeddings"]
    assert not torch.equal(state["adapter.embedding.weight"], before)  # updated from where it was saved
    torch.testing.assert_close(load_file(out / "checkpoint-1" / "adapter_model.safetensors")["prompt_embeddings"],
                               reparameterised(state))
