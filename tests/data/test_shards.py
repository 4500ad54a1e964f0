"""TAR shards: same samples as SpeechDataset, WebDataset-readable, partitioned by rank/worker."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch

from speechswarm.data.dataset import Sample, SpeechDataset, make_loader
from speechswarm.data.manifest import Utterance
from speechswarm.data.shards import (
    ShardBatches,
    ShardDataset,
    batch_stream,
    shard_key,
    write_shards,
)
from speechswarm.data.tokenizer import CharTokenizer

SR = 16000


def _pcm16(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-9000, 9000, n).astype(np.float32) / 32768


@pytest.fixture
def corpus(tmp_path):
    """Utterances in every shape write_shards handles, plus one with a missing file."""
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "a.flac", _pcm16(1600, 0), SR, subtype="PCM_16")  # copied byte for byte
    sf.write(src / "b.wav", _pcm16(2400, 1), SR, subtype="PCM_16")  # re-encoded, exact
    t = np.arange(4410) / 44100
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 300 * t), 0.2 * np.cos(2 * np.pi * 500 * t)], 1)
    sf.write(src / "c.wav", stereo, 44100, subtype="FLOAT")  # resampled + down-mixed
    sf.write(src / "long.wav", _pcm16(8000, 2), SR, subtype="PCM_16")
    utts = [
        Utterance("a", str(src / "a.flac"), 0.1, "a cat"),
        Utterance("b", str(src / "b.wav"), 0.15, "bee"),
        Utterance("spk1/utt.3", str(src / "c.wav"), 0.1, "dots and slashes", speaker="spk1"),
        Utterance("seg", str(src / "long.wav"), 0.2, "segment", offset=0.1),  # 1600..4800
        Utterance("gone", str(src / "gone.wav"), 1.0, "missing"),
        Utterance("e", str(src / "b.wav"), 0.05, "e", offset=0.05),
    ]
    return utts


def _as_dict(samples) -> dict[str, tuple[list[int], np.ndarray]]:
    return {s.id: (s.tokens.tolist(), s.wave.numpy()) for s in samples if s is not None}


def test_shard_key_is_safe_and_unique():
    assert shard_key("1272-128104-0000") == "1272-128104-0000"
    k = shard_key("spk1/utt.3")
    assert "." not in k and "/" not in k and k.startswith("spk1_utt_3_")
    assert shard_key("spk1/utt.3") == k and shard_key("spk1/utt_3") != k


def test_shards_hold_the_same_samples_as_the_manifest(corpus, tmp_path):
    tok = CharTokenizer()
    out = tmp_path / "shards"
    paths = write_shards(corpus, out, shard_size=2, workers=2, progress=False)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert not list(out.glob(".*tmp"))  # temporary files renamed away

    index = json.loads((out / "shards.json").read_text())
    assert index["num_utts"] == 5 and [s["num_utts"] for s in index["shards"]] == [2, 2, 1]
    assert index["total_duration"] == pytest.approx(0.1 + 0.15 + 0.1 + 0.2 + 0.05)
    assert [(s["id"], s["reason"]) for s in index["skipped"]] == [("gone", "missing_file")]

    expected = _as_dict(SpeechDataset(corpus, tok, SR)[i] for i in range(len(corpus)))
    got = _as_dict(ShardDataset(out, tok, SR, shuffle_shards=False))
    assert set(got) == set(expected) == {"a", "b", "spk1/utt.3", "seg", "e"}
    for uid, (tokens, wave) in expected.items():
        assert got[uid][0] == tokens
        assert got[uid][1].shape == wave.shape
        if uid == "spk1/utt.3":  # float source: 16-bit FLAC quantisation (half a step)
            np.testing.assert_allclose(got[uid][1], wave, atol=0.5 / 32768 + 1e-7)
        else:
            np.testing.assert_array_equal(got[uid][1], wave)


def test_shards_are_webdataset_compatible(corpus, tmp_path):
    import webdataset as wds

    paths = write_shards(corpus, tmp_path / "s", shard_size=10, workers=1, progress=False)
    with tarfile.open(paths[0]) as tar:
        a_bytes = tar.extractfile("a.flac").read()
    assert a_bytes == (tmp_path / "src" / "a.flac").read_bytes()  # 16 kHz mono FLAC: copied

    records = list(wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False))
    assert [r["__key__"] for r in records] == [shard_key(u.id) for u in corpus if u.id != "gone"]
    meta = json.loads(records[2]["json"])
    assert (
        meta["id"] == "spk1/utt.3"
        and meta["speaker"] == "spk1"
        and meta["text"] == "dots and slashes"
    )
    assert meta["duration"] == pytest.approx(0.1)
    wave, rate = sf.read(io.BytesIO(records[2]["flac"]))
    assert rate == SR and wave.ndim == 1 and len(wave) == 1600


def test_duplicate_ids_are_refused(corpus, tmp_path):
    with pytest.raises(ValueError, match="duplicate utterance id 'a'"):
        write_shards([corpus[0], corpus[0]], tmp_path / "d", progress=False)


def test_ranks_and_workers_partition_the_shards(corpus, tmp_path):
    paths = write_shards(corpus * 1, tmp_path / "s", shard_size=1, workers=2, progress=False)
    assert len(paths) == 6
    tok = CharTokenizer()
    for epoch in (0, 1):
        seen = []
        for rank in range(2):
            ds = ShardDataset(paths, tok, SR, rank=rank, world_size=2, seed=5)
            ds.set_epoch(epoch)
            for worker in range(2):
                seen += ds.my_shards(worker, 2)
        assert sorted(seen) == sorted(paths)  # each shard once per epoch

    # through a real DataLoader with 2 workers per rank: every sample exactly once
    ids = []
    for rank in range(2):
        ds = ShardDataset(tmp_path / "s", tok, SR, rank=rank, world_size=2, seed=5)
        loader = make_loader(ShardBatches(ds, 10.0), None, num_workers=2, prefetch_factor=2)
        ids += [i for batch in loader for i in batch.ids]
    assert sorted(ids) == sorted(u.id for u in corpus if u.id != "gone")

    with pytest.raises(ValueError, match="6 shards cannot be shared by 7 ranks"):
        ShardDataset(paths, tok, SR, rank=0, world_size=7)


def test_shuffle_buffer_keeps_every_sample(corpus, tmp_path):
    write_shards(corpus, tmp_path / "s", shard_size=2, progress=False)
    ds = ShardDataset(tmp_path / "s", CharTokenizer(), SR, shuffle_buffer=3, seed=1)
    ids = [s.id for s in ds]
    assert sorted(ids) == sorted(u.id for u in corpus if u.id != "gone")


def _sample(uid: str, seconds: float, rate: int = 10) -> Sample:
    return Sample(uid, torch.zeros(round(seconds * rate)), torch.ones(1, dtype=torch.int64))


def test_batch_stream_hand_computed():
    durations = {"p": 4.0, "q": 1.0, "r": 10.0, "s": 3.0, "t": 5.0, "u": 2.0}
    samples = [_sample(k, d) for k, d in durations.items()]
    # one buffer: sorted 1,2,3 | 4,5 | 10 (padded cost 9, 10, 10 <= 10)
    batches = batch_stream(samples, 10.0, buffer_size=6, sample_rate=10)
    assert [[s.id for s in b] for b in batches] == [["q", "u", "s"], ["p", "t"], ["r"]]
    # buffers of 3 are packed separately: (4, 1, 10) then (3, 5, 2)
    batches = batch_stream(samples, 10.0, buffer_size=3, sample_rate=10)
    assert [[s.id for s in b] for b in batches] == [["q", "p"], ["r"], ["u", "s"], ["t"]]
    batches = batch_stream(samples, 100.0, max_batch_size=4, buffer_size=6, sample_rate=10)
    assert [len(b) for b in batches] == [4, 2]
