"""encode.extend: a sorted dictionary grown by new strings stays sorted, each
string keeps one code, and old codes move to where their strings went."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from personatag.engines.columnar.encode import extend

WORDS = st.text(alphabet="aAbZé-Ω ", max_size=4)


@given(st.lists(WORDS, unique=True), st.lists(WORDS))
def test_extend_keeps_the_dictionary_sorted_and_codes_right(
    base: list[str], new: list[str]
) -> None:
    dictionary = np.asarray(sorted(base), dtype=object)
    merged, codes, moved = extend(dictionary, new)
    words = merged.tolist()
    assert words == sorted(set(base) | set(new))  # sorted, each string once
    assert [words[c] for c in codes.tolist()] == new
    if moved is None:
        assert words == dictionary.tolist()
    else:
        assert [words[c] for c in moved.tolist()] == dictionary.tolist()


def test_extend_twice_finds_what_the_first_added() -> None:
    merged, _, _ = extend(np.asarray(["b", "d"], dtype=object), ["a", "c"])
    again, codes, moved = extend(merged, ["a", "e", "c"])
    assert again.tolist() == ["a", "b", "c", "d", "e"]
    assert codes.tolist() == [0, 4, 2]
    assert moved is not None and moved.tolist() == [0, 1, 2, 3]
