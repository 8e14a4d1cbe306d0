"""``medpeft`` command line: train, eval, predict, export, import, demo.

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
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from medpeft.errors import MedpeftError


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
    from medpeft.config import load_config
    from medpeft.runs.train import format_report, train_run

    config = load_config(resolve_config(args.config), args.overrides)
    print(format_report(train_run(config, resume=not args.no_resume, progress=not args.quiet)))


def cmd_eval(args: argparse.Namespace) -> None:
    from medpeft.runs.evaluate import evaluate_run, format_evaluation

    evaluation = evaluate_run(
        args.run, args.overrides, args.adapter, args.split, args.weights, progress=True
    )
    print(format_evaluation(evaluation))


def cmd_predict(args: argparse.Namespace) -> None:
    from medpeft.runs.predict import predict_files, predict_manifest

    if bool(args.images) == bool(args.manifest):
        raise MedpeftError("give image files or --manifest (one column per modality), not both")
    common = dict(
        weights=args.weights, pretrained=args.pretrained, batch_size=args.batch_size,
        device=args.device, progress=not args.quiet, allow_random_backbone=args.random_backbone,
    )
    if args.manifest:
        predictions = predict_manifest(args.adapter, args.manifest, root=args.root, **common)
    else:
        predictions = predict_files(args.adapter, args.images, **common)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(args.output, "w", newline="")) if args.output else sys.stdout
        predictions.write_csv(out)


def cmd_export(args: argparse.Namespace) -> None:
    from medpeft.adapters.formats import export_peft
    from medpeft.adapters.io import load_adapter, read_config

    method = read_config(args.adapter).method
    if method != "lora":
        raise MedpeftError(
            f"{args.adapter}: a {method!r} adapter has no Hugging Face PEFT equivalent; "
            "only LoRA adapters export"
        )
    model, _ = load_adapter(args.adapter, adapter_name="default", weights=args.weights)
    print(f"wrote {export_peft(model, args.output, 'default')}")


def cmd_import(args: argparse.Namespace) -> None:
    from medpeft.adapters.formats import convert_lora_vit

    folder = convert_lora_vit(
        args.file, args.backbone, args.output, args.img_size, args.labels, args.weights
    )
    print(f"wrote {folder}")


def cmd_demo(args: argparse.Namespace) -> None:
    from medpeft.demo import run_demo

    run_demo(Path(args.output), epochs=args.epochs, progress=not args.quiet)


def cmd_configs(_: argparse.Namespace) -> None:
    for name, path in sorted(builtin_configs().items()):
        first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
        print(f"{name:24s} {first}")


def _show_messages() -> None:
    """Print medpeft's log messages (data summary) and Python warnings as plain lines on stderr."""
    logger = logging.getLogger("medpeft")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
        logger.setLevel(logging.INFO)
    if not os.environ.get("MEDPEFT_DEBUG"):
        warnings.formatwarning = _one_line_warning


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
    p.add_argument("config", help="YAML file or built-in config name (see `medpeft configs`)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=5")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run's adapter on a data split")
    p.add_argument("run", help="run folder (holds config.yaml and adapter/)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of the run's config")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--adapter", help="adapter folder (default: RUN/adapter)")
    p.add_argument("--weights", help="backbone checkpoint file (default: the run's model.weights)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify image files or a manifest with a saved adapter")
    p.add_argument("adapter", help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("images", nargs="*", help="image files (PNG/JPEG/DICOM/NIfTI/.npy), one modality")
    p.add_argument("--manifest", help="CSV with one column per modality (empty = missing), optional id")
    p.add_argument("--root", help="folder of the manifest's relative paths (default: its folder)")
    p.add_argument("--weights", help="backbone checkpoint file")
    p.add_argument("--pretrained", action="store_true", help="fetch the backbone weights from the hub")
    p.add_argument(
        "--random-backbone", action="store_true",
        help="run an adapter that records no backbone weights on a random backbone (meaningless outputs)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--output", help="CSV file to write (default: stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a LoRA adapter to Hugging Face PEFT format")
    p.add_argument("adapter", help="medpeft adapter folder")
    p.add_argument("--output", required=True, help="folder for the PEFT adapter")
    p.add_argument("--weights", help="backbone checkpoint file")
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
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("demo", help="offline demo: synthetic data, tiny ViT, LoRA vs baselines")
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("configs", help="list the built-in recipe configs")
    p.set_defaults(func=cmd_configs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line and exit with status 2."""
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
        args.func(args)
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
    return 0


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
