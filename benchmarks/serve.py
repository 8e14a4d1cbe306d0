"""Serving throughput: ``medpeft serve`` vs a naive FastAPI app, both over real HTTP, in one run.

All servers run the same adapter bank (two LoRA tasks on one ViT, random weights written
by this script, offline) in a process of their own:

* ``medpeft serve DIR`` started by the CLI: uploads decoded in a pool sized to the cores,
  deadline-formed micro-batches (``--max-batch``, ``--max-wait-ms``), the forward in one
  worker thread; once per ``--frozen-dtypes`` (``serve``: float32, ``serve-bf16``:
  ``--frozen-dtype bfloat16``, the backbone's frozen layers in bf16, forwards under bf16
  autocast; ``serve-int8`` on request: ``--frozen-dtype int8``, int8 Linear weights, the same
  autocast).
* the naive baseline (``--naive DIR``, this script): one ``def`` endpoint per request, as
  FastAPI runs sync endpoints, in a thread each: read the upload, ``bank.preprocess``,
  ``bank.predict`` of that one sample.

Clients (httpx, one asyncio task each, in this process) send real PNG bodies (a random
``--png-size`` px RGB image each, tasks alternating) to ``POST /predict`` at every
concurrency of ``--clients``, for ``--seconds`` each. Levels and servers are interleaved:
each round runs every level on both servers, in a rotated order, so load from other
processes hits both alike; the table aggregates the rounds. Mean batch comes from
the server's ``/metrics`` (``medpeft_batch_size``); the baseline's is 1 by construction.
The stage profile times one request's parts in this process (decode, preprocess, forward
at batch 1 and at ``--max-batch``, JSON) on the same bank, the forwards in every frozen dtype;
the agreement of each low-precision bank with the float32 one is measured on
``--agreement-images`` random preprocessed images (max abs probability difference, top-1).

Run: ``python benchmarks/serve.py`` (ViT-S/16 at 64, 112 and 224 px, 1/8/32/128 clients, three
servers, about 20 minutes; tables to ``benchmarks/results/serve.md``).
"""

from __future__ import annotations

import os

import medpeft  # noqa: F401  (torchvision shim before timm)
from medpeft.threads import SLEEPING_THREADS

os.environ.update(SLEEPING_THREADS)  # before torch is imported: idle OpenMP threads sleep, as in serve

# isort: split
import argparse
import asyncio
import io
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import timm
import torch
from fastapi import FastAPI, File, Form, UploadFile
from PIL import Image
from safetensors.torch import save_file

from medpeft.adapters_io.folder import save_adapter
from medpeft.bank import AdapterBank
from medpeft.methods import LoraSettings
from medpeft.model import ModelSpec, build_model

RESULTS = Path(__file__).parent / "results" / "serve.md"
TASKS = {"tb": 4, "blood": 8}  # task -> LoRA rank (q, v); 3 classes each
LABELS = ["a", "b", "c"]
STARTUP_S = 180
TARGET_CLIENTS, TARGET_RATIO = 32, 2.0
SERVERS = {"float32": "serve", "bfloat16": "serve-bf16", "int8": "serve-int8"}  # serve --frozen-dtype -> server name
DEFAULT_DTYPES = ["float32", "bfloat16"]  # int8 runs at bf16's speed (serve_precision.md): on request


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224", help="timm ViT (random weights)")
    parser.add_argument("--img-size", type=int, nargs="+", default=[64, 112, 224],
                        help="the model's input size; each gets its own adapters, servers and table")
    parser.add_argument("--png-size", type=int, default=256, help="side of the uploaded PNGs")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--seconds", type=float, default=6.0, help="per level, server and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=16, help="serve --max-batch (and the profile's)")
    parser.add_argument("--serve-options", default="", help="more serve options, e.g. '--threads 1'")
    parser.add_argument("--frozen-dtypes", nargs="+", default=DEFAULT_DTYPES, choices=list(SERVERS),
                        help="a medpeft serve server for each (serve --frozen-dtype)")
    parser.add_argument("--agreement-images", type=int, default=256,
                        help="random images comparing each low-precision bank's probabilities with float32's")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--naive", type=Path, metavar="DIR", help=argparse.SUPPRESS)  # the baseline server
    return parser.parse_args(argv)


# ----------------------------------------------------------------- adapters


def write_adapters(folder: Path, model: str, img_size: int) -> Path:
    """``folder/adapters/{tb,blood}``: LoRA q+v adapters (random B and head) on one random ViT."""
    weights = folder / "backbone.safetensors"
    torch.manual_seed(0)
    backbone = timm.create_model(model, num_classes=len(LABELS), img_size=img_size)
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    for seed, (name, rank) in enumerate(TASKS.items(), start=1):
        settings = LoraSettings(targets=("q", "v"), rank=rank)
        spec = ModelSpec(model, len(LABELS), img_size=img_size, settings=settings)
        torch.manual_seed(seed)
        task_model = build_model(spec, weights=weights)
        with torch.no_grad():
            for param_name, param in task_model.named_parameters():
                if "lora_B" in param_name or param_name.startswith("head"):
                    param.normal_(0, 0.02)
        save_adapter(task_model, folder / "adapters" / name, spec, LABELS, "multiclass",
                     backbone_weights=weights)
    return folder / "adapters"


def png_bodies(count: int, side: int) -> list[bytes]:
    """``count`` random RGB PNGs of ``side`` px."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


# ------------------------------------------------------------ naive server


def naive_app(directory: Path) -> FastAPI:
    """FastAPI the obvious way: a sync endpoint (a thread per request), one forward each."""
    bank = AdapterBank.from_directory(directory, device="cpu")
    app = FastAPI()

    @app.post("/predict")
    def predict(task: str = Form(), image: UploadFile = File()) -> dict:  # noqa: B008
        inputs = bank.preprocess(task, {"image": image.file.read()})
        (scores,) = bank.predict([task], [inputs])
        return {"task": task, "probabilities": dict(zip(bank.task(task).labels, scores.tolist()))}

    return app


def run_naive(directory: Path) -> None:
    """The baseline server on a free port (uvicorn names it), torch threads as `medpeft serve`'s."""
    import uvicorn

    from medpeft.threads import configure_threads, resolve_threads

    configure_threads(resolve_threads())
    uvicorn.run(naive_app(directory), host="127.0.0.1", port=0, log_level="info")


# ---------------------------------------------------------------- servers


class Server:
    """A server subprocess; its port read from uvicorn's start-up line."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        env.pop("OMP_NUM_THREADS", None)  # both pick their torch threads the same way
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=env)
        self.log: list[str] = []
        self.port: int | None = None
        started = threading.Event()

        def read() -> None:
            for line in self.process.stdout:
                self.log.append(line)
                found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
                if found:
                    self.port = int(found.group(1))
                    started.set()
            started.set()

        threading.Thread(target=read, daemon=True).start()
        if not started.wait(STARTUP_S) or self.port is None:
            self.stop()
            raise RuntimeError(f"{name} did not start:\n" + "".join(self.log))
        self.url = f"http://127.0.0.1:{self.port}"

    def batches(self) -> tuple[float, float, float]:
        """(samples, batches, forward seconds) so far, from ``/metrics``; zeros without them."""
        text = httpx.get(self.url + "/metrics", timeout=30).text if self.name != "naive" else ""
        names = ("medpeft_batch_size_sum", "medpeft_batch_size_count", "medpeft_batch_duration_seconds_sum")
        found = [re.search(rf"^{name} ([\d.e+-]+)", text, re.M) for name in names]
        return tuple(float(f.group(1)) if f else 0.0 for f in found)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


# ---------------------------------------------------------------- clients


@dataclass
class Level:
    """What the clients saw at one concurrency on one server (all rounds)."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    samples: float = 0.0
    batches: float = 0.0
    forward_s: float = 0.0  # seconds the server spent in batched forwards
    first_error: str = ""

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")


async def load(url: str, clients: int, seconds: float, bodies: list[bytes], level: Level) -> None:
    """``clients`` clients each sending one request after the other for ``seconds``."""
    tasks = list(TASKS)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        deadline = time.perf_counter() + seconds

        async def client(index: int) -> None:
            sent = index
            while time.perf_counter() < deadline:
                body = bodies[sent % len(bodies)]
                start = time.perf_counter()
                try:
                    answer = await http.post("/predict", data={"task": tasks[sent % len(tasks)]},
                                             files={"image": ("scan.png", body, "image/png")})
                    ok = answer.status_code == 200
                    problem = "" if ok else f"{answer.status_code} {answer.text[:200]}"
                except httpx.HTTPError as error:
                    ok, problem = False, repr(error)
                if ok:
                    level.latencies.append(time.perf_counter() - start)
                else:
                    level.errors += 1
                    level.first_error = level.first_error or problem
                sent += 1

        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        level.seconds += time.perf_counter() - start


Results = dict[tuple[str, int], Level]  # (server, clients) -> what the clients saw


def measure(servers: list[Server], args: argparse.Namespace, bodies: list[bytes]) -> Results:
    """Every level on every server, ``--rounds`` times, in rotated orders."""
    results = {(s.name, c): Level() for s in servers for c in args.clients}
    for round_ in range(args.rounds):
        for i, clients in enumerate(args.clients):
            order = servers if (round_ + i) % 2 == 0 else servers[::-1]
            for server in order:
                level = results[server.name, clients]
                before = server.batches()
                asyncio.run(load(server.url, clients, args.seconds, bodies, level))
                after = server.batches()
                level.samples += after[0] - before[0]
                level.batches += after[1] - before[1]
                level.forward_s += after[2] - before[2]
                print(f"round {round_ + 1} {server.name:6s} {clients:4d} clients: "
                      f"{level.throughput:7.1f} req/s so far, {level.errors} errors", flush=True)
    return results


# ---------------------------------------------------------------- profile


def profile(banks: dict[str, AdapterBank], body: bytes, max_batch: int) -> list[tuple[str, float]]:
    """Median ms of each part of one request, in this process (the server's torch threads); the
    forwards on each bank of ``banks`` (frozen dtype -> bank)."""
    from medpeft.bank.inputs import read_image
    from medpeft.serve.schemas import Prediction, Task

    bank = next(iter(banks.values()))
    names = [list(TASKS)[i % len(TASKS)] for i in range(max_batch)]
    x = bank.preprocess(names[0], {"image": body})
    info = Task(**bank.task(names[0]).__dict__)
    scores = bank.predict(names[:1], [x])[0].tolist()

    def ms(fn, repeats: int = 20) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    forwards = []
    for dtype, each in banks.items():
        batch = ms(lambda each=each: each.predict(names, [x] * max_batch), repeats=5)
        forwards += [(f"forward, batch of 1, {dtype}", ms(lambda each=each: each.predict(names[:1], [x]))),
                     (f"forward, batch of {max_batch}, per sample, {dtype}", batch / max_batch)]
    return [
        ("decode PNG (bytes -> image)", ms(lambda: read_image("image", body))),
        ("decode + preprocess (bank.preprocess)", ms(lambda: bank.preprocess(names[0], {"image": body}))),
        *forwards,
        ("answer as JSON", ms(lambda: Prediction.of(info, scores, ["image"]).model_dump_json())),
    ]


def bank_probabilities(bank: AdapterBank, size: int, count: int, batch: int = 16) -> torch.Tensor:
    """The bank's probabilities (rows) of ``count`` random preprocessed ``size`` px images
    (normal noise, one seed for all banks), tasks alternating, in batches of ``batch``."""
    generator = torch.Generator().manual_seed(1)
    names = [list(TASKS)[i % len(TASKS)] for i in range(count)]
    inputs = [{"image": torch.randn(3, size, size, generator=generator)} for _ in names]
    rows: list[torch.Tensor] = []
    for start in range(0, count, batch):
        rows += bank.predict(names[start:start + batch], inputs[start:start + batch])
    return torch.stack(rows)


def agreement(reference: torch.Tensor, probs: torch.Tensor) -> tuple[float, float]:
    """(max abs probability difference, share of rows with the same top class) of two banks' answers."""
    return (probs - reference).abs().max().item(), (probs.argmax(1) == reference.argmax(1)).float().mean().item()


# ---------------------------------------------------------------- report


def server_names(args: argparse.Namespace) -> list[str]:
    return [SERVERS[dtype] for dtype in args.frozen_dtypes] + ["naive"]


def table(results: Results, args: argparse.Namespace) -> list[str]:
    rows = ["| clients | server | req/s | p50 ms | p99 ms | mean batch | forward busy | errors | vs naive |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for clients in args.clients:
        naive = results["naive", clients]
        for name in server_names(args):
            level = results[name, clients]
            batch = level.samples / level.batches if level.batches else 1.0
            ratio = level.throughput / naive.throughput if naive.throughput else float("nan")
            busy = f"{level.forward_s / level.seconds:.0%}" if level.batches else "-"
            rows.append(f"| {clients} | {name} | {level.throughput:.1f} | {level.percentile(50):.1f} | "
                        f"{level.percentile(99):.1f} | {batch:.1f} | {busy} | {level.errors} | "
                        f"{ratio:.2f}x |")
    return rows


def verdict(results: Results, server: str) -> str:
    """Whether ``server`` met the target at `TARGET_CLIENTS`: throughput, p99, no errors at any level."""
    ours, naive = results.get((server, TARGET_CLIENTS)), results.get(("naive", TARGET_CLIENTS))
    if ours is None or naive is None:
        return f"(no {TARGET_CLIENTS}-client level: no verdict)"
    ratio = ours.throughput / naive.throughput if naive.throughput else float("nan")
    p99_ok = ours.percentile(99) <= naive.percentile(99)
    errors = sum(level.errors for (name, _), level in results.items() if name == server)
    ok = ratio >= TARGET_RATIO and p99_ok and errors == 0
    return (f"`{server}` at {TARGET_CLIENTS} clients: {ratio:.2f}x the baseline's throughput (target >= "
            f"{TARGET_RATIO}x), p99 {ours.percentile(99):.0f} vs {naive.percentile(99):.0f} ms; "
            f"errors at all levels: {errors}. " + ("Target met." if ok else "Target NOT met."))


def measure_banks(args: argparse.Namespace, directory: Path, img_size: int, body: bytes) -> tuple[list, list[str]]:
    """The stage profile, and a line on each low-precision bank's agreement with float32's."""
    from medpeft.frozen_dtype import FROZEN_DTYPES
    from medpeft.threads import configure_threads, resolve_threads

    configure_threads(resolve_threads())
    banks = {dtype: AdapterBank.from_directory(directory, device="cpu", frozen_dtype=FROZEN_DTYPES[dtype])
             for dtype in dict.fromkeys(["float32", *args.frozen_dtypes])}
    stages = profile(banks, body, args.max_batch)
    reference = bank_probabilities(banks["float32"], img_size, args.agreement_images)
    lines = []
    for dtype in args.frozen_dtypes:
        if dtype != "float32":
            difference, top1 = agreement(reference, bank_probabilities(banks[dtype], img_size, args.agreement_images))
            lines.append(f"`{SERVERS[dtype]}` vs float32 on {args.agreement_images} random images (3 classes): "
                         f"max abs probability difference {difference:.1e}, top-1 agreement {top1:.1%}.")
    return stages, lines


def run_size(args: argparse.Namespace, img_size: int) -> list[str]:
    """Profile and benchmark the servers on adapters of one input size; the section's markdown lines."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_adapters(Path(tmp), args.model, img_size)
        bodies = png_bodies(16, args.png_size)
        serve_argv = [sys.executable, "-m", "medpeft.cli", "serve", str(directory), "--port", "0",
                      "--device", "cpu", "--no-auth", "--max-batch", str(args.max_batch),
                      *args.serve_options.split()]
        naive_argv = [sys.executable, __file__, "--naive", str(directory)]
        stages, agreements = measure_banks(args, directory, img_size, bodies[0])
        servers = [Server(SERVERS[dtype], [*serve_argv, "--frozen-dtype", dtype]) for dtype in args.frozen_dtypes]
        servers.append(Server("naive", naive_argv))
        try:
            results = measure(servers, args, bodies)
        finally:
            for server in servers:
                server.stop()
    lines = [
        f"## {args.model} at {img_size} px",
        "",
        f"Random weights, 2 LoRA tasks (q+v, ranks 4 and 8) alternating per request; {args.png_size} px RGB "
        f"PNG uploads; load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}.",
        "",
        "Stage profile (median ms of one request's parts, in the benchmark process on the servers' "
        "torch threads):",
        "",
        "| stage | ms |",
        "|---|---:|",
        *[f"| {name} | {value:.2f} |" for name, value in stages],
        "",
        *agreements,
        "",
        *table(results, args),
        "",
        *[verdict(results, name) for name in server_names(args)[:-1]],
    ]
    errors = {f"{n} {c}": level.first_error for (n, c), level in results.items() if level.first_error}
    if errors:
        lines += ["", "First error per level: " + "; ".join(f"{k}: {v}" for k, v in errors.items())]
    return [*lines, ""]


def time_calls(forward: Callable[[], None], seconds: float) -> dict:
    """Median wall and CPU ms of ``forward()`` over ``seconds`` (at least 3 calls, after 2 warm-ups)."""
    for _ in range(2):
        forward()
    wall: list[float] = []
    cpu: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(wall) < 3:
        start, start_cpu = time.perf_counter(), time.process_time()
        forward()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"ms": 1000 * statistics.median(wall), "cpu_ms": 1000 * statistics.median(cpu), "calls": len(wall)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.naive is not None:
        run_naive(args.naive)
        return 0
    command = "python benchmarks/serve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Serving throughput: `medpeft serve` (float32 and bfloat16 frozen weights) vs a naive FastAPI app",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"torch {torch.__version__}, {os.cpu_count()} CPUs shared with other work (see the load averages); "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s per level and server; "
        f"`medpeft serve {f'--max-batch {args.max_batch} {args.serve_options}'.strip()}` "
        f"(`--frozen-dtype` {' and '.join(args.frozen_dtypes)}), other options at their defaults; "
        "the naive baseline runs float32.",
        "",
    ]
    for img_size in args.img_size:
        lines += run_size(args, img_size)
    text = "\n".join(lines)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
