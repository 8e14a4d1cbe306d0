"""Which method runs on which backbone family: the table of docs/methods.md, from registry metadata.

A method that ``needs_tokens`` (MoRA) acts on a token stream, which hierarchical timm
models (Swin, ConvNeXt) do not have; a method with ``only_kind`` (prompts: ViLT) needs
that kind's fusion. Every other method wraps Linears found by role
(:mod:`medpeft.methods.targets`) and runs on every family.
"""

from __future__ import annotations

from medpeft.methods import get_method, method_names

FAMILY_STREAMS = {"timm_vit": True, "timm_hier": False, "transformers": True, "open_clip": True}
"""Whether the models of each family have a token stream (timm_vit: unless dynamic size/patch dropout)."""


def cell(method: str, family: str) -> str:
    """One table cell: ``yes``, or why not."""
    spec = get_method(method)
    if spec.only_kind is not None:
        return f"no: model.kind {spec.only_kind} only"
    if spec.needs_tokens and not FAMILY_STREAMS[family]:
        return "no: needs a token stream"
    return "yes"


def capability_table() -> str:
    """The method x family table in Markdown, with the metadata columns."""
    families = list(FAMILY_STREAMS)
    lines = [
        "| method | " + " | ".join(families) + " | mergeable | mixed-task batches |",
        "|---|" + "---|" * (len(families) + 2),
    ]
    for name in method_names():
        spec = get_method(name)
        cells = [cell(name, family) for family in families]
        flags = ["yes" if spec.mergeable else "no", "yes" if spec.mixable else "no"]
        lines.append(f"| {name} | " + " | ".join(cells + flags) + " |")
    return "\n".join(lines) + "\n"
