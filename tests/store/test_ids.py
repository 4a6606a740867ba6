"""The id block: a consecutive run encodes to the same bytes without building it."""

from __future__ import annotations

import numpy as np
import pytest

from personatag.store.ids import decode_ids, encode_ids, encode_run


@pytest.mark.parametrize(
    ("lo", "hi"),
    [(0, 0), (1, 1), (300, 300), (0, 9), (1, 10), (255, 300), (256, 260), (2**32 - 1, 2**32 + 3)],
)
def test_a_run_encodes_like_its_ids(lo: int, hi: int) -> None:
    ids = np.arange(lo, hi + 1, dtype=np.int64)
    block = encode_run(lo, hi)
    assert block == encode_ids(ids)
    assert decode_ids(block).tolist() == ids.tolist()


def test_an_empty_run_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        encode_run(5, 4)
