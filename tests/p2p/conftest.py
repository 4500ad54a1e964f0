"""Fixtures for the peer-to-peer tests: a tone corpus with 6 speakers, tiny p2p configs.

`tone_speakers`: the 4 tone utterances of tests/conftest.py copied to 6 speakers (24
utterances, 0.3-1.3 s each): split by speaker into 4 agents they give 8, 8, 4 and 4
utterances, so data-size weights differ. `p2p_config(out, *overrides)`: the tiny test
model (~30k parameters, fp32, one thread) with a p2p section that trains 2 local steps
per round and scores only the last round.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from speechswarm.data.manifest import read_manifest, write_manifest


@pytest.fixture(scope="session")
def tone_speakers(tone_corpus, tmp_path_factory) -> Path:
    base = read_manifest(tone_corpus)
    utts = [u.with_(id=f"s{s}-{u.id}", speaker=f"s{s}") for s in range(6) for u in base]
    path = tmp_path_factory.mktemp("tone_speakers") / "tones6.jsonl"
    write_manifest(path, utts)
    return path


@pytest.fixture
def p2p_config(tiny_config, tone_speakers, tmp_path, one_torch_thread):
    def make(name: str, *overrides: str):
        return tiny_config(
            tmp_path / name,
            tone_speakers,
            f"data.test_manifest={tone_speakers}",
            "data.validate=false",
            "data.max_batch_size=2",
            "optim.name=adam",
            "optim.schedule=constant",
            "optim.lr=3e-3",
            "p2p.agents=4",
            "p2p.partition=speaker",
            "p2p.local_steps=2",
            "p2p.rounds=2",
            "p2p.eval_every=100",
            "p2p.global_test_max=4",
            *overrides,
        )

    return make
