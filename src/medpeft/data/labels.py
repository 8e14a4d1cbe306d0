"""Label cells -> targets: class names (``|``-joined for multilabel) or 0/1 columns.

A target is a class index (multiclass) or a 0/1 tuple in label order
(multilabel); errors name the cell (file, line, column). Names that differ only
in case or surrounding spaces are one class spelt two ways: refused when the
classes are inferred, matched to the listed class when ``classes`` are given.
`positive_class` picks the class a binary task's sensitivity and ROC are about.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from medpeft.data.records import Target
from medpeft.errors import ConfigError, DataError, did_you_mean

NEGATIVE_NAMES = ("normal", "negative", "benign", "healthy", "no", "0", "false", "control")


def natural_sorted(names: set[str]) -> list[str]:
    """Names sorted with integer names first, in numeric order."""
    return sorted(names, key=lambda n: (0, int(n), "") if n.isdigit() else (1, 0, n))


def split_cell(cell: str | None, sep: str = "|") -> list[str]:
    """The non-blank names in a cell of ``sep``-joined names, stripped."""
    return [p.strip() for p in (cell or "").split(sep) if p.strip()]


def label_key(name: str) -> str:
    """A label name without case and surrounding spaces (``" Normal "`` -> ``"normal"``)."""
    return name.strip().casefold()


def match_class(name: str, classes: Sequence[str]) -> str | None:
    """The class ``name`` spells: itself, else the one class equal but for case and spaces."""
    if name in classes:
        return name
    matches = [c for c in classes if label_key(c) == label_key(name)]
    return matches[0] if len(matches) == 1 else None


def check_spellings(counts: Mapping[str, int], where: str) -> None:
    """DataError naming two label names that differ only in case or surrounding spaces."""
    first: dict[str, str] = {}
    for name in sorted(counts):
        other = first.setdefault(label_key(name), name)
        if other != name:
            raise DataError(
                f"{where}: labels {other!r} ({_samples(counts[other])}) and {name!r} "
                f"({_samples(counts[name])}) differ only in case or surrounding spaces; write one "
                "spelling, or list the classes in data.classes (cells are then matched to them ignoring case)"
            )


def _samples(count: int) -> str:
    return f"{count} sample" if count == 1 else f"{count} samples"


def ordered_labels(
    seen: Iterable[str], classes: Sequence[str] | None = None, where: str = "labels"
) -> list[str]:
    """Label names in head order: ``classes`` if given, else the names ``seen``, sorted.

    Inferred names that differ only in case or spaces are a DataError naming ``where``
    (see `check_spellings`).
    """
    if classes is None:
        counts = Counter(seen)
        check_spellings(counts, where)
        return natural_sorted(set(counts))
    if len(set(classes)) != len(classes):
        raise ConfigError(f"classes contain duplicates: {list(classes)}")
    return list(classes)


def parse_binary(value: str | None, where: str) -> float:
    """A 0/1 cell (``0``, ``1``, ``1.0``...) as a float; DataError naming ``where`` otherwise."""
    text = (value or "").strip()
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if number not in (0.0, 1.0):
        raise DataError(f"{where}: expected 0 or 1, got {text!r}")
    return number


def binary_target(row: Mapping[str, str], columns: Sequence[str], where: str) -> tuple[float, ...]:
    """A multilabel target from one 0/1 column per label."""
    return tuple(parse_binary(row.get(c), f"{where} column {c!r}") for c in columns)


def encode_labels(
    cell: str | None, names: Sequence[str], task: str, sep: str, where: str
) -> Target:
    """A cell of class names as a class index (multiclass) or 0/1 tuple in ``names`` order."""
    spelt = split_cell(cell, sep)
    unknown = [v for v in spelt if match_class(v, names) is None]
    if unknown:
        raise DataError(f"{where}: unknown label(s) {unknown}; known classes {list(names)}")
    values = [match_class(v, names) for v in spelt]
    if task == "multilabel":
        return tuple(float(n in values) for n in names)
    if len(values) != 1:
        hint = "pass task='multilabel' if empty cells mean 'no finding'"
        raise DataError(f"{where}: expected one class name, got {cell!r} ({hint})")
    return names.index(values[0])


def positive_class(labels: Sequence[str], task: str, chosen: str | None = None) -> str | None:
    """The class a binary task's sensitivity, specificity, PPV and ROC are about (None otherwise).

    ``chosen`` (``data.positive_class``) if given; else the one class that is not a
    recognised negative (`NEGATIVE_NAMES`, ignoring case). ConfigError if ``chosen`` is
    no class, is given for a task without two classes, or no single class qualifies.
    """
    binary = task == "multiclass" and len(labels) == 2
    if chosen is not None:
        if not binary:
            raise ConfigError(
                f"data.positive_class: {chosen!r} needs a task of two classes; this one is "
                f"{task} with labels {list(labels)}"
            )
        if chosen not in labels:
            hint = did_you_mean(chosen, labels)
            raise ConfigError(f"data.positive_class: {chosen!r} is not one of the classes {list(labels)}{hint}")
        return chosen
    if not binary:
        return None
    candidates = [label for label in labels if label_key(label) not in NEGATIVE_NAMES]
    if len(candidates) != 1:
        raise ConfigError(
            f"data.positive_class: which of the classes {list(labels)} is positive (the one "
            f"sensitivity and ROC are about)? Neither or both are a recognised negative "
            f"({', '.join(NEGATIVE_NAMES)}); set it, e.g. data.positive_class={labels[1]}"
        )
    return candidates[0]
