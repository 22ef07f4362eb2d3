"""Splitting a dataset into a training and a held-out part, the same way for the same seed."""

from __future__ import annotations

import random

from rlxf.data.dataset import Dataset
from rlxf.data.errors import DataError


def split_data(ds: Dataset, test_size: float | int, seed: int) -> tuple[Dataset, Dataset]:
    """``(train, test)``: a seeded random choice of ``test_size`` records is held out.

    ``test_size`` is a fraction in ``(0, 1)`` (rounded to the nearest count) or a count (an ``int``).
    Both parts keep the file order of their records and each record's line number. The result depends
    only on the number of records, ``test_size`` and ``seed``. Raises :class:`DataError` when either part
    would be empty.
    """
    n = len(ds)
    if isinstance(test_size, bool) or not isinstance(test_size, int | float):
        raise ValueError(f"test_size must be a fraction in (0, 1) or a count, got {test_size!r}")
    if isinstance(test_size, float):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size as a fraction must be between 0 and 1 (exclusive), got {test_size}")
        n_test = round(n * test_size)
        asked = f"test_size={test_size} of {n} records gives {n_test} held-out records"
    else:
        n_test = test_size
        asked = f"test_size={test_size} held-out records out of {n}"
    if not 0 < n_test < n:
        raise DataError(
            f"cannot split: {asked}; both the training and the held-out part need at least one record",
            path=ds.path,
            split=ds.split,
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    test = sorted(order[:n_test])
    held = set(test)
    train = [i for i in range(n) if i not in held]
    return ds.select(train), ds.select(test)
