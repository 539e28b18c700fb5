"""Load generator for a Triton Jasper ensemble: throughput and latency percentiles.

Upstream (NVIDIA DeepLearningExamples, ``PyTorch/SpeechRecognition/Jasper/triton/scripts/``
``run_perf_client.sh`` and ``generate_perf_results.sh``) measured with ``perf_client``, now
``perf_analyzer``, whose wheel does not run on every machine (it needs a newer glibc); this tool
does the same kind of run with ``tritonclient``:

    python triton/perf_client.py -u 127.0.0.1:8001 -i grpc -m jasper-onnx-ensemble \\
        --batch_sizes 1 2 4 8 --concurrency 1 2 4 8 --audio_seconds 2 7 16.7 \\
        --modes static dynamic --requests 200 --seconds 10 --output_prefix results/triton_perf

For each audio length (synthetic noise of exactly that many samples, upstream's ``--shape
AUDIO_SIGNAL:<len>``), each mode and each batch size:

- ``static``: requests of ``batch`` recordings each, at every ``--concurrency`` level (requests in
  flight at once); the server runs the batches as they come.
- ``dynamic``: requests of one recording each at concurrency ``2 x batch`` (as upstream's
  ``generate_perf_results.sh``), so that a server whose models have dynamic batching
  (``model_repository.py --dynamic_batching``) can gather them; whether the served acoustic model
  has it is reported.

Each level sends ``--warmup`` unmeasured requests per worker, then runs until ``--requests``
requests have completed or ``--seconds`` have passed, whichever comes first. Reported per level:
throughput in inferences (recordings) per second, latency p50/p90/p95/p99 and mean in ms
(nearest-rank percentiles over the completed requests), requests and errors; as a markdown table
(printed, and ``PREFIX.md``) and JSON (``PREFIX.json``). The table's header names the client
machine (:func:`common.machine.summary`); the server may run on another.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from client import ClientError, SpeechClient

from common import machine

PERCENTILES = (50, 90, 95, 99)


@dataclass
class Level:
    """One measured load level and its results."""

    mode: str
    audio_seconds: float
    batch_size: int
    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput: float  # recordings per second
    latency_ms: dict[str, float]


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return sorted_ms[max(0, math.ceil(q / 100 * len(sorted_ms)) - 1)]


def measure(
    args: argparse.Namespace,
    mode: str,
    seconds_audio: float,
    batch: int,
    concurrency: int,
    sample_rate: int,
    dtype: type,
) -> Level:
    n = round(seconds_audio * sample_rate)
    rng = np.random.default_rng(args.seed)
    audio = (0.1 * rng.standard_normal((batch, n))).astype(dtype)
    num_samples = np.full((batch, 1), n, dtype=np.int32)
    latencies: list[float] = []
    errors, issued = [0], [0]
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    deadline = [math.inf]

    def worker() -> None:
        client = None
        try:
            client = SpeechClient(args.url, args.protocol, args.model, args.timeout)
            for _ in range(args.warmup):
                client.infer(audio, num_samples)
        except ClientError:
            with lock:
                errors[0] += 1
        start.wait()  # every worker reaches the start line, even one that failed
        if client is None:
            return
        try:
            while time.perf_counter() < deadline[0]:
                with lock:  # take a request slot first: the bound holds with many workers
                    if issued[0] >= args.requests:
                        return
                    issued[0] += 1
                t0 = time.perf_counter()
                try:
                    client.infer(audio, num_samples)
                except ClientError:
                    with lock:
                        errors[0] += 1
                    continue
                with lock:
                    latencies.append(1000.0 * (time.perf_counter() - t0))
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    deadline[0] = t0 + args.seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    ms = sorted(latencies)
    stats = {f"p{q}": percentile(ms, q) for q in PERCENTILES} if ms else {}
    if ms:
        stats["mean"] = sum(ms) / len(ms)
    return Level(
        mode=mode,
        audio_seconds=seconds_audio,
        batch_size=batch,
        concurrency=concurrency,
        requests=len(ms),
        errors=errors[0],
        seconds=elapsed,
        throughput=len(ms) * batch / elapsed if elapsed > 0 else 0.0,
        latency_ms=stats,
    )


def served_batching(client: SpeechClient) -> dict:
    """The acoustic model behind the ensemble and its dynamic-batching settings (or None)."""
    if client.protocol == "http":
        ensemble = client.client.get_model_config(client.model)
    else:
        ensemble = client.client.get_model_config(client.model, as_json=True)["config"]
    steps = ensemble.get("ensemble_scheduling", {}).get("step", [])
    model = steps[1]["model_name"] if len(steps) > 1 else client.model
    if client.protocol == "http":
        cfg = client.client.get_model_config(model)
    else:
        cfg = client.client.get_model_config(model, as_json=True)["config"]
    return {"acoustic_model": model, "dynamic_batching": cfg.get("dynamic_batching")}


def markdown(levels: list[Level], header: str) -> str:
    cols = ["mode", "audio (s)", "batch", "concurrency", "inferences/s"]
    cols += [f"p{q} (ms)" for q in PERCENTILES] + ["mean (ms)", "requests", "errors"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for lv in levels:
        lat = [f"{lv.latency_ms[k]:.1f}" if k in lv.latency_ms else "-" for k in
               [f"p{q}" for q in PERCENTILES] + ["mean"]]  # fmt: skip
        cells = [lv.mode, f"{lv.audio_seconds:g}", str(lv.batch_size), str(lv.concurrency),
                 f"{lv.throughput:.2f}", *lat, str(lv.requests), str(lv.errors)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Throughput and latency of a Triton Jasper ensemble under load.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-u", "--url", default="127.0.0.1:8001", help="server (HTTP or gRPC port)")
    p.add_argument("-i", "--protocol", default="grpc", choices=["http", "grpc"])
    p.add_argument("-m", "--model", default="jasper-onnx-ensemble", help="ensemble to load")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument(
        "--audio_seconds", type=float, nargs="+", default=[2.0, 7.0, 16.7], help="lengths"
    )
    p.add_argument(
        "--modes", nargs="+", default=["static", "dynamic"], choices=["static", "dynamic"]
    )
    p.add_argument("--requests", type=int, default=200, help="completed requests per level (bound)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per level (bound)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured requests per worker")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--seed", type=int, default=0, help="synthetic audio")
    p.add_argument("--output_prefix", default=None, help="write PREFIX.md and PREFIX.json")
    return p


def plan(args: argparse.Namespace, max_batch: int) -> Iterator[tuple[float, str, int, int]]:
    """``(audio seconds, mode, request batch, concurrency)`` of every level, in order; requests
    larger than the served ``max_batch`` (0: no limit) are left out."""
    for seconds_audio in args.audio_seconds:
        for mode in args.modes:
            for batch in args.batch_sizes:
                if mode == "static":
                    levels = [(batch, c) for c in args.concurrency]
                else:
                    levels = [(1, 2 * batch)]
                for request_batch, concurrency in levels:
                    if not max_batch or request_batch <= max_batch:
                        yield seconds_audio, mode, request_batch, concurrency


def table_header(args: argparse.Namespace, batching: dict) -> str:
    return (
        f"Triton load test of {args.model} over {args.protocol} ({args.url}); acoustic model "
        f"{batching['acoustic_model']}, dynamic batching "
        f"{'on' if batching['dynamic_batching'] is not None else 'off'}; client on "
        f"{platform.node() or 'this machine'} ({machine.summary()}); "
        f"bounds {args.requests} requests / {args.seconds:g} s per level."
    )


def write_report(args: argparse.Namespace, table: str, batching: dict, levels: list[Level]) -> None:
    md, js = Path(args.output_prefix + ".md"), Path(args.output_prefix + ".json")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(table)
    report = {
        "model": args.model,
        "protocol": args.protocol,
        "url": args.url,
        "server_batching": batching,
        "bounds": {"requests": args.requests, "seconds": args.seconds, "warmup": args.warmup},
        "levels": [asdict(lv) for lv in levels],
    }
    js.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {md} and {js}")


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        probe = SpeechClient(args.url, args.protocol, args.model, args.timeout)
        served, batching = probe.served, served_batching(probe)
        probe.close()
        levels = []
        for seconds_audio, mode, batch, concurrency in plan(args, served.max_batch_size):
            level = measure(
                args,
                mode,
                seconds_audio,
                batch,
                concurrency,
                served.sample_rate,
                served.audio_dtype,
            )
            levels.append(level)
            print(
                f"{mode} {seconds_audio:g} s batch {batch} concurrency {concurrency}: "
                f"{level.throughput:.2f} inf/s, "
                f"p50 {level.latency_ms.get('p50', float('nan')):.1f} ms",
                flush=True,
            )
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = markdown(levels, table_header(args, batching))
    print(table)
    if args.output_prefix:
        write_report(args, table, batching, levels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
