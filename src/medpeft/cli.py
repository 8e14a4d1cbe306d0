"""``medpeft`` command line: train, eval, predict, report, explain, serve, export, import, demo.

Configs are YAML files (or the name of a built-in recipe, see ``medpeft configs``);
any key can be overridden with ``section.key=value`` arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from medpeft.errors import ConfigError, MedpeftError
from medpeft.threads import configure_threads, resolve_threads

if TYPE_CHECKING:
    from medpeft.config import RunConfig

DEMO_THREADS = 1  # the demo's tiny ViT: 42 s on one thread, 56 s on two idle cores (benchmarks/demo_threads.py)
INFERENCE_FROZEN_DTYPES = ("float32", "bfloat16", "int8")  # serve/predict --frozen-dtype (docs/serving.md)


def builtin_configs() -> dict[str, Path]:
    """Built-in recipe configs by name (``melo_shenzhen``, ...)."""
    folder = resources.files("medpeft") / "configs"
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".yaml")}


def resolve_config(name_or_path: str) -> Path:
    """A config file path, or the built-in config of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    known = builtin_configs()
    if name_or_path in known:
        return known[name_or_path]
    raise MedpeftError(
        f"config {name_or_path!r} is neither a file nor a built-in config; built-in: {sorted(known)}"
    )


def cmd_train(args: argparse.Namespace) -> None:
    from medpeft.runs.train import format_report, train_run
    from medpeft.train import distributed

    repeats = [f"train.repeats={args.repeats}"] if args.repeats else []
    config = _train_config(args.config, [*args.overrides, *repeats])
    if config.train.repeats > 1:
        from medpeft.runs.repeats import format_repeats, train_repeats

        summary = train_repeats(config, resume=not args.no_resume, progress=not args.quiet)
        if distributed.is_main():
            print(format_repeats(summary))
        return
    report = train_run(config, resume=not args.no_resume, progress=not args.quiet)
    if distributed.is_main():  # under `accelerate launch`, one report
        print(format_report(report))


def _train_config(name_or_data: str, overrides: Sequence[str]) -> RunConfig:
    """The config ``medpeft train`` runs: a file or built-in name, or a starter for a data folder/CSV."""
    from medpeft.config import load_config

    if not (Path(name_or_data).is_dir() or name_or_data.lower().endswith((".csv", ".tsv"))):
        return load_config(resolve_config(name_or_data), overrides)
    import tempfile

    from medpeft.runs.starter import implicit_config

    with tempfile.TemporaryDirectory(prefix="medpeft-starter-") as folder:
        return load_config(implicit_config(name_or_data, Path(folder)), overrides)


def cmd_init(args: argparse.Namespace) -> None:
    from medpeft.runs.starter import describe_inspection, write_starter

    inspection, out = write_starter(args.data, args.out, args.name)
    for line in describe_inspection(inspection):
        print(line)
    print(f"wrote {out}; train with: medpeft train {out}")


def cmd_eval(args: argparse.Namespace) -> None:
    from medpeft.runs.evaluate import evaluate_run, format_evaluation

    evaluation = evaluate_run(
        args.run, args.overrides, args.adapter, args.split, args.weights, progress=True, data=args.data,
        allow_other_weights=args.allow_other_weights,
    )
    print(format_evaluation(evaluation))
    print(f"results in {evaluation.folder}")


def cmd_predict(args: argparse.Namespace) -> int:
    from medpeft.frozen_dtype import frozen_dtype_named
    from medpeft.runs.predict import predict_files, predict_manifest, predict_tasks
    from medpeft.train import distributed
    from medpeft.train.settings import resolve_device

    distributed.setup()  # under `accelerate launch`: each process scores a slice
    resolve_device(args.device, "--device")  # before any model is loaded
    if args.adapters and args.adapter:  # with --adapter, the first positional is an image
        args.images, args.adapter = [args.adapter, *args.images], None
    if not args.adapters and not args.adapter:
        raise MedpeftError("give an adapter folder, or --adapter NAME=FOLDER once per task")
    if bool(args.images) == bool(args.manifest):
        raise MedpeftError("give image files or --manifest (one column per modality), not both")
    common = dict(
        weights=args.weights, pretrained=args.pretrained, batch_size=args.batch_size,
        device=args.device, progress=not args.quiet, allow_random_backbone=args.random_backbone,
        allow_other_weights=args.allow_other_weights,
        frozen_dtype=frozen_dtype_named(args.frozen_dtype, "--frozen-dtype"),
    )
    if args.adapters:
        del common["progress"]
        predictions = predict_tasks(
            _named_adapters(args.adapters), args.images, args.manifest, args.root, **common
        )
    elif args.manifest:
        predictions = predict_manifest(args.adapter, args.manifest, root=args.root, **common)
    else:
        predictions = predict_files(args.adapter, args.images, **common)
    if not distributed.is_main():  # every process holds all rows; the main one writes them
        return 0
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(args.output, "w", newline="")) if args.output else sys.stdout
        predictions.write_csv(out)
    failed = predictions.failures()
    if failed:
        print(
            f"medpeft predict: {len(failed)} of {len(predictions.ids)} sample(s) could not be read "
            f"(status 'error' in the output, with the reason; first: {failed[0][1]})",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _named_adapters(values: Sequence[str]) -> dict[str, str]:
    """``NAME=FOLDER`` (or ``FOLDER``, named after it) per ``--adapter`` -> {name: folder}."""
    adapters: dict[str, str] = {}
    for value in values:
        name, _, folder = value.rpartition("=") if "=" in value else (Path(value).name, "", value)
        if name in adapters:
            raise MedpeftError(f"--adapter: task name {name!r} given twice; use NAME=FOLDER")
        adapters[name] = folder
    return adapters


def cmd_export(args: argparse.Namespace) -> None:
    from medpeft.adapters_io.export import check_one_backbone, export_merged, export_onnx, how_to_load
    from medpeft.adapters_io.folder import load_adapter, read_config
    from medpeft.adapters_io.peft import PEFT_METHODS, export_peft

    if not (args.output or args.merged or args.onnx):
        raise MedpeftError("export: give --output (PEFT), --merged DIR and/or --onnx FILE")
    config = read_config(args.adapter)
    plain = dict(weights=args.weights, allow_random_backbone=args.random_backbone,
                 allow_other_weights=args.allow_other_weights)
    if args.merged:
        print(f"wrote {export_merged(args.adapter, args.merged, **plain)} ({how_to_load(config, args.merged)})")
    if args.onnx:
        difference = export_onnx(args.adapter, args.onnx, **plain)
        print(f"wrote {args.onnx} (onnxruntime vs PyTorch: max abs logit difference {difference:.1e})")
    if not args.output:
        return
    if config.method not in PEFT_METHODS:
        raise MedpeftError(
            f"{args.adapter}: a {config.method!r} adapter has no Hugging Face PEFT equivalent; "
            "only LoRA and DoRA adapters export to PEFT"
        )
    check_one_backbone(args.adapter, config)
    model, _ = load_adapter(args.adapter, adapter_name="default", **plain)
    try:
        folder = export_peft(model, args.output, "default", config.labels, config.task)
    except ConfigError as error:
        raise ConfigError(f"{args.adapter}: {error}") from None
    print(f"wrote {folder} (peft: PeftModel.from_pretrained(native_model, \"{folder}\"))")


def cmd_import(args: argparse.Namespace) -> None:
    from medpeft.adapters_io.lora_vit import convert_lora_vit

    folder = convert_lora_vit(
        args.file, args.backbone, args.output, args.img_size, args.labels, args.weights, overwrite=args.force
    )
    print(f"wrote {folder}")


def cmd_demo(args: argparse.Namespace) -> None:
    from medpeft.demo import run_demo

    with _messages_from(logging.WARNING if args.quiet else logging.INFO):
        run_demo(Path(args.output), epochs=args.epochs, progress=not args.quiet)


def cmd_report(args: argparse.Namespace) -> None:
    from medpeft.reports.page import SPLIT, write_report_page
    from medpeft.reports.stats import parse_operating_point
    from medpeft.runs.evaluate import evaluate_run

    def evaluate(run: Path) -> None:
        evaluate_run(run, split=SPLIT, progress=True)

    result = write_report_page(
        args.run, args.out, parse_operating_point(args.threshold), args.resamples, args.seed, evaluate=evaluate
    )
    print(f"wrote {result.page}")


def cmd_explain(args: argparse.Namespace) -> None:
    from medpeft.explain import explain_files

    for explanation in explain_files(
        args.adapter, args.files, args.out, weights=args.weights, target=args.target,
        allow_random_backbone=args.random_backbone, allow_other_weights=args.allow_other_weights,
    ):
        print(explanation.describe())


def cmd_serve(args: argparse.Namespace) -> None:
    from medpeft.serve.main import serve
    from medpeft.serve.settings import ServeSettings, token_from
    from medpeft.train.settings import resolve_device

    resolve_device(args.device, "--device")  # before any model is loaded
    limits = {name: getattr(args, name) for name in ("max_pixels", "max_decodes") if getattr(args, name) is not None}
    settings = ServeSettings(
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
        max_upload_mb=args.max_upload_mb, token=token_from(args.token, args.no_auth), **limits,
    )
    serve(args.directory, settings, args.host, args.port, args.device, args.max_loaded,
          args.weights, args.random_backbone, args.allow_other_weights, args.frozen_dtype)


def cmd_configs(_: argparse.Namespace) -> None:
    for name, path in sorted(builtin_configs().items()):
        first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
        print(f"{name:24s} {first}")


def cmd_backbones(args: argparse.Namespace) -> None:
    from medpeft.backbones.presets import backbone_presets, get_preset
    from medpeft.reports import markdown_table

    if args.name:
        for key, value in vars(get_preset(args.name)).items():
            lines = value if isinstance(value, tuple) and key == "sources" else [value]
            for line in lines:
                print(f"{key:14s} {line}")
        return
    header = ["preset", "library", "architecture", "input", "modality", "params (M)", "access"]
    rows = [[p.name, p.kind, p.architecture, p.img_size, p.modality,
             p.params_m, "gated" if p.gated else "open"]
            for p in backbone_presets().values()]
    print(markdown_table(header, rows, digits=1))


def _show_messages() -> None:
    """Print medpeft's log messages (data summary) and Python warnings as plain lines on stderr."""
    logger = logging.getLogger("medpeft")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
        logger.setLevel(logging.INFO)
    if not os.environ.get("MEDPEFT_DEBUG"):
        warnings.formatwarning = _one_line_warning


@contextlib.contextmanager
def _messages_from(level: int) -> Iterator[None]:
    """Print only medpeft's log messages at ``level`` and above while the block runs."""
    logger = logging.getLogger("medpeft")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


class _StderrHandler(logging.Handler):
    """Writes each message as one line to the ``sys.stderr`` of the moment."""

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage(), file=sys.stderr)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medpeft", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an adapter from a YAML config")
    p.add_argument("config", help="YAML file, built-in config name (see `medpeft configs`), or a data folder "
                   "or CSV to train on with a starter config (see `medpeft init`)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=5")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--repeats", type=int, help="train N times (seeds seed..seed+N-1) into rep<i>/, report mean ± std"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("init", help="inspect a data folder or CSV and write a commented starter config")
    p.add_argument("data", help="image folder (<class>/, <split>/<class>/) or CSV manifest")
    p.add_argument("--out", default="my_task.yaml", help="config file to write (default: my_task.yaml)")
    p.add_argument("--name", help="run name (runs/<name>; default: the data's folder or file name)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("eval", help="evaluate a trained run's adapter on a data split")
    p.add_argument("run", help="run folder (holds config.yaml and adapter/)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of the run's config")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--adapter", help="adapter folder (default: RUN/adapter)")
    p.add_argument("--weights", help="backbone checkpoint file (default: the run's model.weights)")
    p.add_argument(
        "--data", help="other data: a CSV manifest (data.manifest) or a folder (data.root); "
        "results go to RUN/evals/<name>/, as for --adapter, --weights and other settings",
    )
    _allow_other_weights(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify image files or a manifest with a saved adapter")
    p.add_argument(
        "adapter", nargs="?", help="adapter folder (adapter_config.json + adapter_model.safetensors)"
    )
    p.add_argument("images", nargs="*", help="image files (PNG/JPEG/DICOM/NIfTI/.npy) or folders of them "
                   "(searched recursively by extension), one modality")
    p.add_argument(
        "--adapter", dest="adapters", action="append", metavar="NAME=FOLDER",
        help="one task of several on one backbone (repeat): mixed-task batches; a manifest "
        "then needs a 'task' column, image files go through every task",
    )
    p.add_argument("--manifest", help="CSV with one column per modality (empty = missing), optional id")
    p.add_argument("--root", help="folder of the manifest's relative paths (default: its folder)")
    p.add_argument("--weights", help="backbone checkpoint file")
    p.add_argument("--pretrained", action="store_true", help="fetch the backbone weights from the hub")
    p.add_argument(
        "--random-backbone", action="store_true",
        help="run an adapter that records no backbone weights on a random backbone (meaningless outputs)",
    )
    _allow_other_weights(p)
    _frozen_dtype(p, "the backbone's")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--output", help="CSV file to write (default: stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export an adapter: PEFT format, merged model, ONNX")
    p.add_argument("adapter", help="medpeft adapter folder")
    p.add_argument("--output", help="folder for the Hugging Face PEFT adapter (LoRA, DoRA)")
    p.add_argument(
        "--merged", metavar="DIR",
        help="folder for the merged model in its library's format (timm folder, transformers "
        "save_pretrained, open_clip state dict; task head beside)",
    )
    p.add_argument("--onnx", metavar="FILE", help="ONNX file of the merged model (checked with onnxruntime)")
    p.add_argument("--weights", help="backbone checkpoint file")
    p.add_argument(
        "--random-backbone", action="store_true",
        help="export an adapter that records no backbone weights on a random backbone (tests only)",
    )
    _allow_other_weights(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-lora-vit", help="convert a published LoRA-ViT/MeLo .safetensors file")
    p.add_argument("file", help="e.g. ..._lora_4_4.safetensors (rank 4, alpha 4)")
    p.add_argument(
        "--backbone",
        help="timm model the file was trained on (default: from a public file name, base = vit_base_patch16_224)",
    )
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--labels", nargs="+", help="class names in head order (default: class_0 ...)")
    p.add_argument("--output", required=True, help="medpeft adapter folder to write")
    p.add_argument("--weights", help="backbone checkpoint file (checked against the adapter)")
    p.add_argument("--force", action="store_true", help="replace an adapter --output already holds")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("demo", help="offline demo: synthetic data, tiny ViT, LoRA vs baselines")
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--epochs", type=int, default=25, help="epochs of each adaptation run")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines (warnings still show)")
    p.set_defaults(func=cmd_demo, default_threads=DEMO_THREADS)

    p = sub.add_parser("report", help="HTML report page of a finished run (plots, CIs, per-class table)")
    p.add_argument("run", help="run folder (holds report.json, adapter/)")
    p.add_argument("--out", help="folder for index.html and the PNGs (default: RUN/report)")
    p.add_argument(
        "--threshold", help="operating point: argmax, youden or a probability (default: argmax "
        "for multiclass, 0.5 for multilabel)",
    )
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("explain", help="attention rollout and Grad-CAM overlays of a prediction")
    p.add_argument("adapter", help="adapter folder (any backbone family; several modalities: a timm ViT run)")
    p.add_argument(
        "files", nargs="+",
        help="image files (one modality: each explained alone) or modality=path pairs (several)",
    )
    p.add_argument("--out", default="explain", help="folder for the overlay PNGs and explain.json")
    p.add_argument("--target", help="class to explain (default: the predicted class)")
    p.add_argument("--weights", help="backbone checkpoint file (default: the adapter's record)")
    p.add_argument("--random-backbone", action="store_true",
                   help="allow an adapter that records no backbone weights (meaningless maps)")
    _allow_other_weights(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("serve", help="HTTP server for the task adapters of a directory (one backbone)")
    p.add_argument("directory", help="folder of task adapter folders (each task is named after its folder)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (the log names it)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--max-batch", type=int, default=16, help="samples per forward pass, any mix of tasks")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch waits to fill while other requests are on their way")
    p.add_argument("--queue-size", type=int, default=256, help="waiting samples before 503")
    p.add_argument("--max-upload-mb", "--max-body-mb", type=float, default=32.0,
                   help="largest request body before 413")
    p.add_argument("--max-pixels", type=int,
                   help="most pixels of an uploaded image or volume slice, checked before decoding "
                   "(default: 60 M, as data.max_pixels)")
    p.add_argument("--max-decodes", type=int,
                   help="threads decoding uploads, one torch thread each (default: the CPU cores)")
    p.add_argument("--token", help="bearer token every API call needs (default: $MEDPEFT_TOKEN; none: open)")
    p.add_argument("--no-auth", action="store_true",
                   help="serve without a token even if MEDPEFT_TOKEN is set (empty)")
    p.add_argument("--max-loaded", type=int, help="most adapters on the backbone at once (default: all)")
    _frozen_dtype(p, "the shared backbone's")
    backbone = p.add_mutually_exclusive_group()
    backbone.add_argument("--weights", help="backbone checkpoint file (default: the one the adapters record)")
    backbone.add_argument(
        "--random-backbone", action="store_true",
        help="serve adapters that record no backbone weights on a random backbone (meaningless outputs)",
    )
    _allow_other_weights(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("backbones", help="list the foundation-model presets (model.backbone=NAME)")
    p.add_argument("name", nargs="?", help="a preset: show every field, with the sources of its facts")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("configs", help="list the built-in recipe configs")
    p.set_defaults(func=cmd_configs)
    for command in sub.choices.values():
        _threads_option(command)
    return parser


def _threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, metavar="N",
        help="CPU threads for torch (default: $MEDPEFT_THREADS, else $OMP_NUM_THREADS, else the "
        "cores this process may use (the demo: 1); idle threads sleep instead of spinning)",
    )


def _allow_other_weights(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-other-weights", action="store_true",
        help="load adapters onto backbone weights other than those they record (another sha256), "
        "with a warning instead of an error",
    )


def _frozen_dtype(parser: argparse.ArgumentParser, whose: str) -> None:
    parser.add_argument(
        "--frozen-dtype", choices=INFERENCE_FROZEN_DTYPES, default="float32",
        help=f"dtype of {whose} frozen Linear/Conv weights, forwards under bf16 autocast when not float32 "
        "(faster on CPUs with native bf16 and on GPUs, slightly different outputs): bfloat16 halves "
        "their memory, int8 (torchao, pip install 'medpeft[scale]') quarters the Linear ones; "
        "adapters and heads stay float32",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line and exit with status 2 (``predict`` with some
    unreadable samples: 1)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if hasattr(args, "overrides"):  # key=value overrides may come after options too
        args.overrides += overrides
        extra = [a for a in extra if a not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _show_messages()
    try:
        threads = resolve_threads(args.threads, command_default=getattr(args, "default_threads", None))
        configure_threads(threads)
        status = args.func(args)
    except KeyboardInterrupt:
        if os.environ.get("MEDPEFT_DEBUG"):
            raise
        print(
            f"medpeft {args.command}: interrupted (a training run resumes from its last finished "
            "epoch when the same command is run again)",
            file=sys.stderr,
        )
        return 130
    except (MedpeftError, OSError) as error:
        if os.environ.get("MEDPEFT_DEBUG"):
            raise
        print(f"medpeft {args.command}: error: {user_message(error)}", file=sys.stderr)
        return 2
    return status or 0


def user_message(error: BaseException) -> str:
    """One line for a user-caused error.

    An error raised in a DataLoader worker arrives re-raised with the worker's
    traceback in its message; only its last line (the original message) is kept.
    Other OS errors (disk full, permissions) are named with the file.
    """
    text = str(error)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        return re.sub(r"^[\w.]+Error: ", "", last.strip())
    if isinstance(error, OSError) and not isinstance(error, MedpeftError):
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror or text} (errno {error.errno})"
    return text

if __name__ == "__main__":
    sys.exit(main())
