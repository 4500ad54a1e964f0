import math

import pytest
import torch

from speechswarm.decode.greedy import ctc_collapse, greedy_decode


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([1, 1, 1], [1]),  # "a a a" on consecutive frames is one "a"
        ([1, 0, 1], [1, 1]),  # a blank between repeats keeps both: "aa"
        ([0, 1, 1, 0, 0, 2, 2, 0, 2], [1, 2, 2]),
        ([0, 0, 0], []),  # all blank
        ([], []),
        ([3, 2, 1], [3, 2, 1]),
        ([5, 0, 5, 5, 0, 0, 5], [5, 5, 5]),
    ],
)
def test_ctc_collapse(ids, expected):
    assert ctc_collapse(ids) == expected


def test_ctc_collapse_other_blank():
    assert ctc_collapse([2, 2, 0, 2, 1, 0], blank=2) == [0, 1, 0]


def _log_probs(paths: list[list[int]], vocab: int) -> torch.Tensor:
    """(N, T, V) log-probs whose best path is `paths[n]` (0.7 on the path class)."""
    n, t = len(paths), len(paths[0])
    probs = torch.full((n, t, vocab), 0.3 / (vocab - 1))
    for b, path in enumerate(paths):
        for f, c in enumerate(path):
            probs[b, f, c] = 0.7
    return probs.log()


def test_greedy_decode_batch_and_out_lens():
    paths = [
        [1, 1, 0, 1, 2, 0, 0, 3],  # -> 1 1 2 3
        [0, 0, 0, 0, 0, 0, 0, 0],  # all blank -> []
        [2, 2, 2, 0, 3, 3, 1, 1],  # out_len 4 cuts the frames after it -> [2]
    ]
    lp = _log_probs(paths, vocab=4)
    assert greedy_decode(lp, torch.tensor([8, 8, 4])) == [[1, 1, 2, 3], [], [2]]
    # padding frames past out_len must not leak: frame 5 of row 0 would add a "3"
    assert greedy_decode(lp, torch.tensor([5, 8, 8])) == [[1, 1, 2], [], [2, 3, 1]]


def test_greedy_decode_zero_length_and_ties():
    lp = torch.full((1, 3, 3), math.log(1 / 3))  # every class tied: lowest id (blank) wins
    assert greedy_decode(lp, torch.tensor([3])) == [[]]
    assert greedy_decode(_log_probs([[1, 2]], 3), torch.tensor([0])) == [[]]


def test_greedy_decode_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\(N, T, V\)"):
        greedy_decode(torch.zeros(4, 3), torch.tensor([4]))
