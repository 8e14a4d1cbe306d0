"""The report page's misclassified samples: thumbnails of the worst false negatives and positives.

Each sample is named by its id, shown as a small JPEG embedded in the page (the page
stays self-contained) and linked to its file. Worst: a false negative with the lowest
score for its true class, a false positive with the highest score for a class it lacks.
Scores written before medpeft named samples (no ``id`` column) get no section.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medpeft.data.imageio import load_image
from medpeft.errors import DataError
from medpeft.reports import html
from medpeft.reports.scores import SplitScores

THUMBNAIL_PX = 96
SHOWN = 8  # of each kind
TITLE = "Misclassified samples"


@dataclass(frozen=True)
class Mistake:
    """Sample ``index`` wrongly called (or missed) for class ``label`` with ``score``."""

    index: int
    label: int
    score: float


def worst_mistakes(
    scores: SplitScores, decisions: np.ndarray, classes: Sequence[int], limit: int = SHOWN
) -> tuple[list[Mistake], list[Mistake]]:
    """The ``limit`` worst false negatives and false positives of ``classes`` at ``decisions``."""
    truth, cols = scores.truth[:, classes], list(classes)

    def cells(mask: np.ndarray) -> list[Mistake]:
        return [Mistake(int(i), cols[j], float(scores.scores[i, cols[j]])) for i, j in np.argwhere(mask)]

    false_negatives = sorted(cells((truth == 1) & (decisions[:, classes] == 0)), key=lambda m: m.score)
    false_positives = sorted(cells((truth == 0) & (decisions[:, classes] == 1)), key=lambda m: -m.score)
    return false_negatives[:limit], false_positives[:limit]


def misclassified_section(
    scores: SplitScores, decisions: np.ndarray, classes: Sequence[int], page_dir: Path
) -> str | None:
    """The page section of the worst mistakes (None for scores without sample ids)."""
    if scores.ids is None:
        return None
    false_negatives, false_positives = worst_mistakes(scores, decisions, classes)
    if not false_negatives and not false_positives:
        return html.section(TITLE, '<p class="note">No misclassified test sample at the operating point.</p>')
    return html.section(
        TITLE,
        "<h3>Worst false negatives</h3>", _grid(false_negatives, scores, decisions, page_dir),
        "<h3>Worst false positives</h3>", _grid(false_positives, scores, decisions, page_dir),
    )


def _grid(mistakes: list[Mistake], scores: SplitScores, decisions: np.ndarray, page_dir: Path) -> str:
    if not mistakes:
        return '<p class="note">None.</p>'
    return '<div class="thumbs">' + "".join(_card(m, scores, decisions, page_dir) for m in mistakes) + "</div>"


def _card(mistake: Mistake, scores: SplitScores, decisions: np.ndarray, page_dir: Path) -> str:
    i = mistake.index
    file = _first_file(scores, i)
    picture = _thumbnail(file) if file else None
    image = (f'<img src="{picture}" alt="{html.escape(scores.ids[i])}">' if picture
             else '<div class="nothumb">no image</div>')
    if file:
        image = f'<a href="{html.escape(_href(file, page_dir))}">{image}</a>'
    caption = (f"{html.escape(scores.ids[i])}<br>true: {html.escape(_names(scores.labels, scores.truth[i]))}<br>"
               f"called: {html.escape(_names(scores.labels, decisions[i]))}<br>"
               f"p({html.escape(scores.labels[mistake.label])}) = {mistake.score:.3f}")
    return f'<figure class="thumb">{image}<figcaption>{caption}</figcaption></figure>'


def _names(labels: Sequence[str], indicators: np.ndarray) -> str:
    return ", ".join(label for label, on in zip(labels, indicators) if on) or "none"


def _first_file(scores: SplitScores, index: int) -> str | None:
    for column in (scores.paths or {}).values():
        if column[index]:
            return column[index].split("|")[0]
    return None


def _thumbnail(file: str) -> str | None:
    """A JPEG data URI of the image at ``file``, at most `THUMBNAIL_PX` a side (None if unreadable)."""
    try:
        image = load_image(file)
    except DataError:
        return None
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _href(file: str, page_dir: Path) -> str:
    """The file as a link from the page: relative to its folder (absolute across drives)."""
    try:
        return Path(os.path.relpath(Path(file).resolve(), page_dir.resolve())).as_posix()
    except ValueError:
        return Path(file).resolve().as_uri()
