"""Check that every image of some records decodes, before a run depends on them.

Training reads the test split only after the last epoch; a corrupt file there used
to end a long run with a traceback. `check_images` decodes every image once, in
a few threads (with a progress bar), exactly as training will read it: files
exist, decode (truncated or corrupt files fail), have a usable shape and channel
count and hold finite intensities. Every bad row is reported at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from medpeft.data.imageio import ReadOptions, load_image
from medpeft.data.records import Record
from medpeft.errors import DataError
from medpeft.threads import available_cores

MAX_LISTED = 10
MAX_THREADS = 8


def check_images(
    records: Sequence[Record],
    kinds: Mapping[str, str],
    what: str = "",
    progress: bool = False,
    options: ReadOptions | None = None,
) -> None:
    """Decode every image of ``records``; DataError listing each file that fails.

    Args:
        records: The samples to check.
        kinds: Modality -> ``image``/``text`` (text is not checked).
        what: Name of the records in the progress bar and message (``test split``).
        progress: Show a progress bar.
        options: How volumes and wide-range images are read (as in training).
    """
    problems = [
        f"{records[i].where or records[i].id} column {m!r}: {error}"
        for i, m, error in unreadable_images(records, kinds, what, progress, options)
    ]
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} unreadable image(s) in the {what}:\n  {shown}{more}")


def unreadable_images(
    records: Sequence[Record],
    kinds: Mapping[str, str],
    what: str = "",
    progress: bool = False,
    options: ReadOptions | None = None,
) -> list[tuple[int, str, str]]:
    """``(record index, modality, error)`` of every image of ``records`` that does not decode,
    in record order (arguments as `check_images`)."""
    images = [m for m, kind in kinds.items() if kind == "image"]
    jobs = [
        (i, m, path)
        for i, record in enumerate(records)
        for m in images
        for path in record.values.get(m) or ()
    ]

    def problem(job: tuple[int, str, str]) -> str | None:
        try:
            load_image(job[2], options=options)
        except (OSError, ValueError) as error:  # DataError is a ValueError
            return str(error)
        return None

    threads = min(MAX_THREADS, available_cores())
    with ThreadPoolExecutor(threads) as pool:
        found = pool.map(problem, jobs)
        bar = tqdm(found, total=len(jobs), desc=f"checking {what} images", disable=not progress, leave=False)
        return [(i, m, error) for (i, m, _), error in zip(jobs, bar) if error is not None]
