"""Check that every image of some records decodes, before a run depends on them.

Training reads the test split only after the last epoch; a corrupt file there used
to end a long run with a traceback. `check_images` decodes every image once (with
a progress bar) and reports every bad row at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tqdm import tqdm

from medpeft.data.imageio import load_image
from medpeft.data.records import Record
from medpeft.errors import DataError

MAX_LISTED = 10


def check_images(
    records: Sequence[Record], kinds: Mapping[str, str], what: str = "", progress: bool = False
) -> None:
    """Decode every image of ``records``; DataError listing each file that fails.

    Args:
        records: The samples to check.
        kinds: Modality -> ``image``/``text`` (text is not checked).
        what: Name of the records in the progress bar and message (``test split``).
        progress: Show a progress bar.
    """
    images = [m for m, kind in kinds.items() if kind == "image"]
    problems = []
    for record in tqdm(records, desc=f"checking {what} images", disable=not progress, leave=False):
        for m in images:
            for path in record.values.get(m) or ():
                try:
                    load_image(path)
                except (OSError, ValueError) as error:  # DataError is a ValueError
                    problems.append(f"{record.where or record.id} column {m!r}: {error}")
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} unreadable image(s) in the {what}:\n  {shown}{more}")
