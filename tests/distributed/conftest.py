"""Fixtures for the distributed tests (corpus and command lines in pair_corpus.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pair_corpus import write_tone_pairs


@pytest.fixture(scope="session")
def tone_pairs(tmp_path_factory) -> Path:
    """12 equal-length utterances: 3 batches of 4, or 6 batches of 2 dealt to 2 ranks."""
    return write_tone_pairs(tmp_path_factory.mktemp("pairs"), 12)
