"""What the server's metrics cost: the ServeMetrics calls of one request, and one render of /metrics.

    python bench/metrics_overhead.py [--tasks 4] [--requests 10000] [--repeats 5]

Each simulated request makes the calls the server makes for an answered request (``request_queued``,
``first_token``, ``step``, ``request_done``), spread over ``--tasks`` task labels; then ``render()``
(what ``GET /metrics`` returns) is timed 20 times. Writes bench/results/metrics_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from softprompt.serve.metrics import ServeMetrics

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    load_start = os.getloadavg()[0]
    metrics, tasks = ServeMetrics(), [f"task_{i}" for i in range(args.tasks)]
    per_request_us = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for i in range(args.requests):
            task = tasks[i % len(tasks)]
            metrics.request_queued(task)
            metrics.first_token(task, 0.05)
            metrics.step(batch_size=8, queue_depth=3, new_tokens=8)
            metrics.request_done(task, prompt_tokens=40, completion_tokens=16, seconds=0.4, finish_reason="length")
        per_request_us.append((time.perf_counter() - start) / args.requests * 1e6)
    render_ms = []
    for _ in range(20):
        start = time.perf_counter()
        text = metrics.render()
        render_ms.append((time.perf_counter() - start) * 1e3)
    result = {"tasks": args.tasks, "requests": args.requests, "repeats": args.repeats,
              "per_request_us": [round(x, 2) for x in per_request_us],
              "per_request_us_median": round(statistics.median(per_request_us), 2),
              "render_ms": [round(x, 3) for x in render_ms], "render_ms_median": round(statistics.median(render_ms), 3),
              "render_bytes": len(text.encode()), "load_average_start": load_start,
              "load_average_end": os.getloadavg()[0]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "metrics_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    table = ("| tasks | per request (4 calls), us: median (min-max) | render, ms: median (min-max) | /metrics bytes "
             "| load average start / end |\n|---:|---|---|---:|---|\n"
             f"| {args.tasks} | {result['per_request_us_median']} ({min(per_request_us):.1f}-{max(per_request_us):.1f}) "
             f"| {result['render_ms_median']} ({min(render_ms):.2f}-{max(render_ms):.2f}) | {result['render_bytes']} "
             f"| {load_start:.1f} / {result['load_average_end']:.1f} |\n")
    (RESULTS / "metrics_overhead.md").write_text(table)
    print(table, end="")


if __name__ == "__main__":
    main()
