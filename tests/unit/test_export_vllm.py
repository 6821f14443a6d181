"""`softprompt export --format vllm` and the client recipe of examples/vllm_client.py.

vLLM itself cannot run here (it needs a GPU build), so its side of the contract is held as vLLM
documents and implements it: ``prompt_embeds`` is base64 of ``torch.save`` of a 2-D ``(tokens,
hidden_size)`` float tensor, read back with ``torch.load(..., weights_only=True)`` and run as the
model's input embeddings. The test checks the exported tensor (shape, the base's dtype, the
adapter's values), that the example's ids are softprompt's own, that the decoded payload run as
``inputs_embeds`` gives softprompt's first-step logits and first token, and what the real openai
client puts on the wire.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
from pathlib import Path

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from softprompt.checkpoint import write_adapter_files
from softprompt.cli import main
from softprompt.config import MethodArgs
from softprompt.engine.forward import decoder_hidden, prefix_of
from softprompt.engine.generate import SamplingParams
from softprompt.methods import METHODS
from softprompt.multitask import MultiTaskPredictor, Request

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "vllm_client.py"
MESSAGES = [{"role": "user", "content": "Which planet is known as the Red Planet?"}]


@pytest.fixture(scope="module")
def client_recipe():
    spec = importlib.util.spec_from_file_location("vllm_client", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def base(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir).requires_grad_(False).eval()


def _saved(method: str, base, folder: Path, L: int = 5):
    adapter = METHODS[method].create(base, None, MethodArgs(finetuning_type=method, num_virtual_tokens=L),
                                     torch.Generator().manual_seed(3))
    if method == "prompt_tuning":
        with torch.no_grad():
            adapter.embedding.weight.normal_(0, 1.0)
    write_adapter_files(folder, adapter.adapter_state(), adapter.adapter_config("tiny", base))
    return adapter


def _vllm_load(payload: str) -> torch.Tensor:
    """What vLLM does with a ``prompt_embeds`` string (entrypoints' safe_load_prompt_embeds)."""
    tensor = torch.load(io.BytesIO(base64.b64decode(payload, validate=True)), weights_only=True,
                        map_location="cpu").to_dense()
    assert isinstance(tensor, torch.Tensor) and tensor.dim() == 2
    return tensor


def test_export_writes_the_prompt_in_the_bases_dtype_and_the_facts(base, tiny_dir, tmp_path):
    bf16 = tmp_path / "tiny-bf16"  # the same model stored in bf16: its config says bfloat16
    AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16).save_pretrained(bf16)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(bf16)
    prompt = _saved("prompt_tuning", base, tmp_path / "pt")
    assert main(["export", "--adapter_name_or_path", str(tmp_path / "pt"), "--format", "vllm",
                 "--model_name_or_path", str(bf16), "--output", str(tmp_path / "out")]) == 0
    tensor = torch.load(tmp_path / "out" / "prompt_embeds.pt", weights_only=True)
    assert tensor.shape == (5, 64) and tensor.dtype == torch.bfloat16
    assert torch.equal(tensor, prompt.embedding.weight.detach().bfloat16())
    info = json.loads((tmp_path / "out" / "softprompt_vllm.json").read_text())
    assert info["model_folder"] == str(bf16.resolve()) and info["model"] == str(bf16)
    assert (info["num_virtual_tokens"], info["hidden_size"], info["dtype"]) == (5, 64, "bfloat16")
    assert info["peft_type"] == "PROMPT_TUNING" and info["prompt_embeds"] == "prompt_embeds.pt"
    assert info["serve"] == f"vllm serve {bf16.resolve()} --enable-prompt-embeds --dtype bfloat16"
    # --dtype overrides; a rerun rewrites softprompt's own two files
    assert main(["export", "--adapter_name_or_path", str(tmp_path / "pt"), "--format", "vllm", "--dtype", "fp16",
                 "--model_name_or_path", str(bf16), "--output", str(tmp_path / "out")]) == 0
    assert torch.load(tmp_path / "out" / "prompt_embeds.pt", weights_only=True).dtype == torch.float16


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_the_client_recipe_gives_softprompts_first_step(method, base, tiny_dir, tmp_path, client_recipe):
    prompt = _saved(method, base, tmp_path / "prompts" / "task")
    assert main(["export", "--adapter_name_or_path", str(tmp_path / "prompts" / "task"), "--format", "vllm",
                 "--model_name_or_path", str(tiny_dir), "--output", str(tmp_path / "out")]) == 0
    info, soft = client_recipe.load_export(tmp_path / "out")
    assert info["dtype"] == "float32" and soft.dtype == torch.float32  # the tiny base is stored in fp32

    tokenizer = AutoTokenizer.from_pretrained(info["model_folder"])
    table = client_recipe.embedding_table(info["model_folder"])
    assert torch.equal(table, base.get_input_embeddings().weight)
    ids = client_recipe.chat_ids(tokenizer, MESSAGES)
    predictor = MultiTaskPredictor.load(str(tiny_dir), prompts_dir=str(tmp_path / "prompts"))
    assert ids == predictor.chat_ids(MESSAGES)  # the same tokens softprompt's chat and server would run

    embeds = client_recipe.request_embeds(soft, table, ids, torch.float32)
    assert embeds.shape == (soft.shape[0] + len(ids), 64)
    sent = _vllm_load(client_recipe.encode(embeds))
    assert torch.equal(sent, embeds)
    with torch.no_grad():
        theirs = base(inputs_embeds=sent[None]).logits[0, -1]  # (V,): what the engine computes from the payload
        ids_t = torch.tensor([ids])
        hidden = decoder_hidden(base, ids_t, torch.ones_like(ids_t), prefix_of(base, prompt))
        ours = base.get_output_embeddings()(hidden)[0, -1]  # softprompt's prefix path
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    first = predictor.run([Request("task", ids, SamplingParams(max_new_tokens=1))])[0].token_ids
    assert first == [int(theirs.argmax())]


def test_the_openai_client_sends_prompt_embeds_as_vllm_reads_them(base, tiny_dir, tmp_path, client_recipe):
    """The real openai client, its HTTP captured (no vLLM here): POST /v1/completions, prompt "", and a
    prompt_embeds string that decodes, vLLM's way, to the tensor the recipe built."""
    _saved("prompt_tuning", base, tmp_path / "pt")
    assert main(["export", "--adapter_name_or_path", str(tmp_path / "pt"), "--format", "vllm",
                 "--model_name_or_path", str(tiny_dir), "--output", str(tmp_path / "out")]) == 0
    info, soft = client_recipe.load_export(tmp_path / "out")
    table = client_recipe.embedding_table(info["model_folder"])
    embeds = client_recipe.request_embeds(soft, table, [5, 6, 7], torch.float32)
    seen = []

    def vllm_like(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, json={"id": "cmpl-1", "object": "text_completion", "created": 0,
                                         "model": info["model_folder"], "choices": [
                                             {"index": 0, "text": "Mars", "finish_reason": "stop", "logprobs": None}]})

    client = openai.OpenAI(base_url="http://vllm.test/v1", api_key="EMPTY",
                           http_client=httpx.Client(transport=httpx.MockTransport(vllm_like)))
    assert client_recipe.complete(client, info, embeds, max_tokens=8).choices[0].text == "Mars"
    (path, body), = seen
    assert path == "/v1/completions" and body["prompt"] == "" and body["model"] == info["model_folder"]
    assert body["max_tokens"] == 8 and torch.equal(_vllm_load(body["prompt_embeds"]), embeds)


def test_refusals_are_one_line_and_touch_no_foreign_file(base, tiny_dir, tmp_path, capsys):
    _saved("prefix_tuning", base, tmp_path / "prefix")
    _saved("prompt_tuning", base, tmp_path / "pt")
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "prompt_embeds.pt").write_bytes(b"someone else's")
    runs = [["--adapter_name_or_path", str(tmp_path / "prefix"), "--output", str(tmp_path / "a")],
            ["--adapter_name_or_path", str(tmp_path / "pt"), "--output", str(tmp_path / "a.pt")],
            ["--adapter_name_or_path", str(tmp_path / "pt"), "--output", str(foreign)],
            ["--adapter_name_or_path", str(tmp_path / "pt"), "--output", str(tmp_path / "b")]]  # base "tiny": absent
    for extra in runs[:3]:
        assert main(["export", "--format", "vllm", "--model_name_or_path", str(tiny_dir), *extra]) == 2
    assert main(["export", "--format", "vllm", *runs[3]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4, err
    assert "keys and values" in err[0] and "writes a folder" in err[1] and "did not write" in err[2]
    assert "base_model_name_or_path" in err[3] and "'tiny'" in err[3] and "--model_name_or_path" in err[3]
    assert (foreign / "prompt_embeds.pt").read_bytes() == b"someone else's"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
