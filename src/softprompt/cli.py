"""The ``softprompt`` command: subcommand -> function. Parses arguments, prints, exits.

User mistakes (bad arguments, data, missing model or adapter) print one line and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download at run time
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from softprompt.arguments import parse_args  # noqa: E402
from softprompt.command_args import ChatArgs, PredictArgs, ServeArgs  # noqa: E402
from softprompt.config import ArgumentError, DataArgs, GenerateArgs, MethodArgs, ModelArgs, TrainArgs  # noqa: E402
from softprompt.files import one_line  # noqa: E402

log = logging.getLogger("softprompt")

USAGE = """usage: softprompt <command> [config.yaml] [--flags]

commands:
  train     train a soft prompt (or another method) with LLaMA-Factory's arguments
  chat      talk to a base model with an optional adapter (--query for one answer)
  predict   answer every example of a dataset, write generated_predictions.jsonl
  serve     an OpenAI-compatible server: one base model, one task per adapter folder
  eval      score the base model and/or adapters on a dataset: classification, generation or loss
  sweep     train one prompt per combination of lengths / inits / learning rates, compare them
  compare   train several methods (prompt_tuning ... full) alike; a table, JSON and plot of their costs and scores
  inspect   what a soft prompt holds: sizes, nearest vocabulary tokens, norms
  export    write a soft prompt as a tensor file (--format embeddings) or a folder for vLLM (--format vllm)
  webui     a web page over all of the above (train, eval, chat, compare, inspect, serve, export; English/Chinese)

`softprompt <command> --help` lists the arguments of a command."""


def _setup_logging() -> None:
    logging.basicConfig(format="[softprompt] %(message)s", level=logging.INFO, stream=sys.stderr)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # peft still calls transformers' old gradient-checkpointing names; nothing a user can act on
    warnings.filterwarnings("ignore", message=".*deprecated and will be removed in v6", category=FutureWarning)
    # bitsandbytes (--quantization_bit) says at import that an optional hub-downloaded CPU kernel is absent;
    # softprompt never downloads at run time, and its own kernels run instead
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def cmd_train(argv: list[str]) -> int:
    from softprompt.launch import is_main_process, launched, lone_accelerate_process, pop_nproc, relaunch

    nproc, argv = pop_nproc(argv)
    (model_args, data_args, method_args, train_args), _ = parse_args(
        argv, [ModelArgs, DataArgs, MethodArgs, TrainArgs], "softprompt train",
        "Train an adapter on a frozen causal LM; arguments as in LLaMA-Factory. "
        "--nproc_per_node N trains in N processes on this machine (data parallel, as torchrun does).",
    )
    if nproc > 1 and not launched():
        return relaunch("train", argv, nproc)
    if lone_accelerate_process():
        log.warning("accelerate launch started ONE process: without GPUs it needs --multi_gpu (its torchrun "
                    "launcher) or a config such as examples/accelerate/ddp.yaml; or use --nproc_per_node N")
    from softprompt.train import train

    result = train(model_args, data_args, method_args, train_args)
    if not is_main_process():
        return 0
    print(f"saved {result.output_dir} after {result.global_step} steps: train loss {result.train_loss:.4f}"
          + (f", validation loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
          + f" ({result.runtime_s:.0f} s)")
    return 0


def cmd_chat(argv: list[str]) -> int:
    (model_args, chat_args, gen), _ = parse_args(
        argv, [ModelArgs, ChatArgs, GenerateArgs], "softprompt chat", "Chat with a base model and an optional adapter."
    )
    from softprompt.inference import Predictor

    predictor = Predictor.load(model_args.model_name_or_path, model_args.adapter_name_or_path,
                               chat_args.template, model_args.cache_dir, model_args.quantization_bit)
    if chat_args.query is not None:
        print(predictor.chat([{"role": "user", "content": chat_args.query}], gen, chat_args.system))
        return 0
    # the shortest conversation must fit the context with --max_new_tokens, or no message ever would
    predictor.check_context([predictor.prompt_ids([{"role": "user", "content": ""}], chat_args.system)],
                            gen.max_new_tokens)
    return _chat_loop(predictor, gen, chat_args.system)


def _chat_loop(predictor, gen: GenerateArgs, system: str | None) -> int:
    history: list[dict] = []
    print("softprompt chat: type a message; 'clear' forgets the history, 'exit' quits.")
    while True:
        try:
            query = input("\nUser: ").strip()
            query.encode("utf-8")  # a byte that is not UTF-8 comes back as a lone surrogate
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        except UnicodeError:
            print("softprompt chat: that line is not UTF-8 text; type it again", file=sys.stderr)
            continue
        if query == "exit":
            return 0
        if query == "clear":
            history = []
            continue
        if not query:
            continue
        history.append({"role": "user", "content": query})
        try:
            answer = predictor.chat(history, gen, system)
        except ArgumentError as exc:  # the conversation outgrew the model's context
            history.pop()
            print(f"softprompt chat: {exc}; 'clear' forgets the history", file=sys.stderr)
            continue
        print(f"Assistant: {answer}")
        history.append({"role": "assistant", "content": answer})


def cmd_predict(argv: list[str]) -> int:
    (model_args, data_args, pred_args, gen), _ = parse_args(
        argv, [ModelArgs, DataArgs, PredictArgs, GenerateArgs], "softprompt predict",
        "Generate an answer for every example of a dataset (batched, greedy by default).",
    )
    from pathlib import Path

    from softprompt.data import load_conversations
    from softprompt.inference import Predictor
    from softprompt.outdir import check_writable

    check_writable(pred_args.output_dir)  # before any loading
    data_args.require_dataset()
    conversations = load_conversations(data_args, gen.seed)
    predictor = Predictor.load(model_args.model_name_or_path, model_args.adapter_name_or_path,
                               data_args.template, model_args.cache_dir, model_args.quantization_bit)
    out = Path(pred_args.output_dir) / "generated_predictions.jsonl"
    rows = predictor.predict(conversations, gen, pred_args.per_device_eval_batch_size, out)
    print(f"wrote {len(rows)} predictions to {out}")
    return 0


def cmd_serve(argv: list[str]) -> int:
    (model_args, serve_args), _ = parse_args(
        argv, [ModelArgs, ServeArgs], "softprompt serve",
        "Serve a base model and every adapter under --prompts_dir through an OpenAI-compatible API.",
    )
    if serve_args.batch_window_ms != ServeArgs.batch_window_ms:  # given, and it changes nothing now
        log.warning("--batch_window_ms is ignored: requests join the running batch at the next step "
                    "(continuous batching); --max_num_seqs sets how many run at once")
    if model_args.adapter_name_or_path:  # one way to add a task, the one the server reloads and lists
        raise ArgumentError("serve does not take --adapter_name_or_path: put the adapter folder under --prompts_dir "
                            "(each subfolder is a task named after it, which requests give as their model)")
    import uvicorn

    from softprompt.multitask import MultiTaskPredictor
    from softprompt.serve.app import create_app

    with _bind(serve_args.host, serve_args.port) as sock:  # a busy port fails now, not after the model loaded
        predictor = MultiTaskPredictor.load(model_args.model_name_or_path, serve_args.prompts_dir,
                                            serve_args.max_prefix_cache_mb, serve_args.template, model_args.cache_dir,
                                            model_args.quantization_bit)
        app = create_app(predictor, serve_args.api_key, serve_args.max_num_seqs, serve_args.max_model_len,
                         serve_args.max_queue, max_messages=serve_args.max_messages, compile=serve_args.compile,
                         prefix_cache_mb=serve_args.max_prefix_cache_mb,
                         max_num_batched_tokens=serve_args.max_num_batched_tokens)
        log.info("serving %s with tasks %s on http://%s:%d/v1", predictor.lm.name,
                 ", ".join(predictor.registry.names()), serve_args.host, serve_args.port)
        config = uvicorn.Config(app, host=serve_args.host, port=serve_args.port, log_level="warning",
                                timeout_graceful_shutdown=60)
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
    return 0 if server.started else 1  # as uvicorn.run: an app that failed to start


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (not yet listening: uvicorn listens on it once the model is loaded)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (OSError, UnicodeError) as exc:
        raise ArgumentError(f"--host {host}: not an address to listen on ({one_line(exc)})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart may reuse the port
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        why = "already in use (is another server running?)" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ArgumentError(f"--port {port}: cannot listen on {host}:{port}, {why}") from None
    return sock


def cmd_eval(argv: list[str]) -> int:
    from softprompt.command_args import EvalArgs, TaskArgs
    from softprompt.evaluate import evaluate
    from softprompt.evaluate.run import markdown_table

    (model_args, data_args, task, eval_args, gen), _ = parse_args(
        argv, [ModelArgs, DataArgs, TaskArgs, EvalArgs, GenerateArgs], "softprompt eval",
        "Evaluate the base model and/or adapters (comma-separated; 'none' = no adapter) on a dataset.",
    )
    report = evaluate(model_args, data_args, task, eval_args, gen)
    print(markdown_table(report["task"], report["results"]), end="")
    print(f"wrote {eval_args.output_dir}/eval_results.json and eval_results.md")
    return 0


def cmd_compare(argv: list[str]) -> int:
    from softprompt.compare import compare_markdown, parse_compare, run_compare

    plan = parse_compare(argv)
    report = run_compare(plan)
    print(compare_markdown(report), end="")
    print(f"wrote {plan.train.output_dir}/compare.md, compare.json and compare.png")
    return 0 if any("error" not in r for r in report["methods"]) else 1


def cmd_sweep(argv: list[str]) -> int:
    from softprompt.sweep import parse_sweep, run_sweep, sweep_markdown

    plan = parse_sweep(argv)
    report = run_sweep(plan)
    print(sweep_markdown(report), end="")
    print(f"wrote {plan.train.output_dir}/sweep_results.json, sweep_results.md and sweep.png")
    return 0


def _check_prompt_adapter(path: str) -> None:
    """inspect reads soft prompts; say so for the other methods' outputs."""
    from softprompt.methods import REGISTRY, describe, read_adapter
    from softprompt.methods.adapter import MODEL_FOLDER

    if describe(path) == MODEL_FOLDER or not read_adapter(path).spec.served:
        served = ", ".join(s.name for s in REGISTRY.values() if s.served)
        raise ArgumentError(f"{path} is {describe(path)}; inspect looks inside prompt adapters ({served})")


def cmd_inspect(argv: list[str]) -> int:
    import json

    from softprompt.command_args import InspectArgs
    from softprompt.evaluate.inspection import describe_adapter, format_report, inspect_adapter
    from softprompt.model import load_model

    (model_args, args), parsed = parse_args(argv, [ModelArgs, InspectArgs], "softprompt inspect",
                                            "Sizes, nearest vocabulary tokens and norms of a soft prompt.",
                                            positional="adapter_name_or_path")  # softprompt inspect ADAPTER
    if not model_args.adapter_name_or_path:
        raise ArgumentError("name the adapter folder: softprompt inspect ADAPTER")
    _check_prompt_adapter(model_args.adapter_name_or_path)
    base = model_args.model_name_or_path  # default: the base model the adapter was trained for
    if "model_name_or_path" not in parsed.given:
        base = describe_adapter(model_args.adapter_name_or_path)["base_model_name_or_path"] or base
    info = inspect_adapter(model_args.adapter_name_or_path, load_model(base, model_args.cache_dir), args.top_k)
    print(json.dumps(info, indent=2, ensure_ascii=False) if args.json else format_report(info).rstrip("\n"))
    return 0


def cmd_export(argv: list[str]) -> int:
    from softprompt.command_args import ExportArgs
    from softprompt.export import export_embeddings, export_vllm

    (args,), _ = parse_args(argv, [ExportArgs], "softprompt export",
                            "Write a prompt_tuning / p_tuning prompt as a (num_virtual_tokens, hidden_size) tensor: "
                            "one file (--format embeddings), or a folder for vLLM's prompt_embeds (--format vllm).")
    if not args.adapter_name_or_path or not args.output:
        where = "FOLDER" if args.format == "vllm" else "FILE.safetensors"
        raise ArgumentError(f"name the adapter and the output: --adapter_name_or_path DIR --output {where}")
    if args.format == "vllm":
        path = export_vllm(args.adapter_name_or_path, args.output, args.dtype, args.model_name_or_path)
        print(f"wrote {path}: prompt_embeds.pt and softprompt_vllm.json for {args.adapter_name_or_path}")
        return 0
    if args.model_name_or_path:
        log.warning("--model_name_or_path is ignored by --format embeddings (the tensor needs no base model)")
    path = export_embeddings(args.adapter_name_or_path, args.output, args.dtype)
    print(f"wrote {path}: prompt_embeds for {args.adapter_name_or_path}")
    return 0


def cmd_webui(argv: list[str]) -> int:
    from softprompt.command_args import WebuiArgs

    (args,), _ = parse_args(argv, [WebuiArgs], "softprompt webui",
                            "LlamaBoard for soft prompts: a web page that runs the softprompt jobs (needs the "
                            "'webui' extra, gradio).")
    try:
        from softprompt.webui.app import launch
    except ImportError as exc:
        raise ArgumentError(f"softprompt webui needs gradio: pip install 'softprompt[webui]' ({exc})") from None
    with _bind(args.host, args.port):  # a busy port or a bad host: one line, before the page is built
        pass
    log.info("softprompt webui on http://%s:%d", args.host, args.port)
    launch(args.host, args.port, args.dataset_dir, args.language)
    return 0


COMMANDS = {"train": cmd_train, "chat": cmd_chat, "predict": cmd_predict, "serve": cmd_serve,
            "eval": cmd_eval, "sweep": cmd_sweep, "compare": cmd_compare, "inspect": cmd_inspect,
            "export": cmd_export, "webui": cmd_webui}


def user_errors() -> tuple[type[BaseException], ...]:
    from softprompt.checkpoint import CheckpointError
    from softprompt.data import DataError
    from softprompt.model import ModelNotFoundError
    from softprompt.train import TrainingError

    return ArgumentError, CheckpointError, DataError, ModelNotFoundError, TrainingError


RANK_ERROR_GRACE_S = 10
"""How long a training process other than rank 0 waits before exiting on a user error (torchrun and
--nproc_per_node stop every process as soon as one exits with an error; rank 0 exits at once)."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"softprompt: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    _setup_logging()
    debug = "--debug" in rest
    try:
        return COMMANDS[command](rest)
    except user_errors() as exc:
        if debug:
            raise
        if os.environ.get("RANK", "0") == "0":  # one line, not one per training process
            print(f"softprompt {command}: error: {exc}", file=sys.stderr)
        else:  # the other ranks hit the same error: let rank 0 print it before a launcher stops everyone
            time.sleep(RANK_ERROR_GRACE_S)
        return 2
    except KeyboardInterrupt:
        print(f"softprompt {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
