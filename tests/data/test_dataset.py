"""SpeechDataset, collate and make_loader on tiny hand-made WAV files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from speechswarm.data.dataset import Batch, Sample, SpeechDataset, collate, make_loader
from speechswarm.data.manifest import Utterance
from speechswarm.data.sampler import BucketBatchSampler
from speechswarm.data.tokenizer import CharTokenizer

SR = 16000


def _write(path, n: int, seed: int) -> np.ndarray:
    # int16-exact samples so the PCM_16 file round-trips bit for bit
    x = np.random.default_rng(seed).integers(-8000, 8000, n).astype(np.float32) / 32768
    sf.write(path, x, SR, subtype="PCM_16")
    return x


@pytest.fixture
def corpus(tmp_path):
    """Five utterances (0.05-0.25 s) and their waves; utterance 'c' has no file."""
    lengths = {"a": 1600, "b": 800, "c": 2400, "d": 4000, "e": 1200}
    texts = {"a": "hi", "b": "a", "c": "abc", "d": "hello world", "e": "ok"}
    utts, waves = [], {}
    for k, (uid, n) in enumerate(lengths.items()):
        path = tmp_path / f"{uid}.wav"
        if uid != "c":
            waves[uid] = _write(path, n, k)
        utts.append(Utterance(uid, str(path), n / SR, texts[uid]))
    return utts, waves


def test_getitem_returns_exact_wave_and_tokens(corpus):
    utts, waves = corpus
    tok = CharTokenizer()
    ds = SpeechDataset(utts, tok, SR)
    s = ds[0]
    assert s.id == "a" and s.wave.dtype == torch.float32 and s.tokens.dtype == torch.int64
    np.testing.assert_array_equal(s.wave.numpy(), waves["a"])
    assert s.tokens.tolist() == tok.encode("hi")
    assert ds[2] is None  # missing file: skipped, not raised


def test_collate_pads_with_zeros_and_counts_skipped(corpus):
    utts, waves = corpus
    tok = CharTokenizer()
    ds = SpeechDataset(utts, tok, SR)
    batch = collate([ds[0], ds[1], ds[2], ds[3]])
    assert batch.ids == ["a", "b", "d"]
    assert batch.skipped == 1
    assert batch.waves.shape == (3, 4000) and batch.waves.dtype == torch.float32
    assert batch.wave_lens.tolist() == [1600, 800, 4000]
    assert batch.wave_lens.dtype == torch.int64
    np.testing.assert_array_equal(batch.waves[1, :800].numpy(), waves["b"])
    assert not batch.waves[1, 800:].any() and not batch.waves[0, 1600:].any()
    assert batch.token_lens.tolist() == [2, 1, 11]
    assert batch.tokens.shape == (3, 11) and batch.tokens.dtype == torch.int64
    assert batch.tokens[0].tolist() == tok.encode("hi") + [0] * 9
    assert batch.tokens[2].tolist() == tok.encode("hello world")


def test_collate_of_only_failures_is_an_empty_batch():
    batch = collate([None, None])
    assert batch.ids == [] and batch.skipped == 2
    assert batch.waves.shape == (0, 0) and batch.tokens.shape == (0, 0)


def test_batch_to_keeps_values():
    b = collate([_sample("x", [0.5, -0.5], [3, 4, 5])])
    moved = b.to("cpu")
    assert torch.equal(moved.waves, b.waves) and torch.equal(moved.tokens, b.tokens)
    assert moved.ids == ["x"] and isinstance(moved, Batch)


def _sample(uid, wave, tokens):
    return Sample(uid, torch.tensor(wave, dtype=torch.float32), torch.tensor(tokens))


def test_speed_perturbed_item_changes_length_and_pitch(tmp_path):
    t = np.arange(SR) / SR
    sf.write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), SR, subtype="FLOAT")
    utt = Utterance("tone", str(tmp_path / "tone.wav"), 1.0, "a")
    ds = SpeechDataset([utt], CharTokenizer(), SR, speed_factors=(1.1,))
    fast = ds[0].wave.numpy()  # 1 s, 1 kHz played 1.1x faster: 0.909 s at 1.1 kHz
    assert abs(len(fast) - round(SR / 1.1)) <= 1 and fast.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(fast * np.hanning(len(fast))))
    assert np.argmax(spectrum) * SR / len(fast) == pytest.approx(1100, abs=5)


def test_speed_factor_deterministic_per_seed_epoch_index(corpus):
    utts, _ = corpus
    ds = SpeechDataset(utts * 8, CharTokenizer(), SR, speed_factors=(0.9, 1.1), seed=3)
    e0 = [ds.speed_factor(i) for i in range(len(ds))]
    assert set(e0) == {0.9, 1.1}
    assert e0 == [ds.speed_factor(i) for i in range(len(ds))]
    ds.set_epoch(1)
    assert [ds.speed_factor(i) for i in range(len(ds))] != e0
    s = ds[0]
    assert abs(len(s.wave) - round(1600 / ds.speed_factor(0))) <= 1


def _epochs(loader, dataset, epochs=(0, 1)):
    out = []
    for epoch in epochs:
        loader.batch_sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        out.append([(b.ids, b.waves.clone(), b.tokens.clone(), b.skipped) for b in loader])
    return out


def test_two_workers_yield_the_same_batches_as_none(corpus):
    utts, _ = corpus
    tok = CharTokenizer()
    results = []
    for workers in (0, 2):
        ds = SpeechDataset(utts * 3, tok, SR, speed_factors=(0.9, 1.0, 1.1), seed=1)
        sampler = BucketBatchSampler([u.duration for u in ds.utts], 0.5, seed=1)
        loader = make_loader(ds, sampler, num_workers=workers, prefetch_factor=2)
        assert len(loader) == len(sampler)
        results.append(_epochs(loader, ds))  # persistent workers must see epoch 1 too
    (ref0, ref1), (got0, got1) = results
    assert ref0 != [] and len(ref1) == len(ref0)
    for ref, got in ((ref0, got0), (ref1, got1)):
        assert [r[0] for r in ref] == [g[0] for g in got]
        assert sum(r[3] for r in ref) == sum(g[3] for g in got) == 3  # 'c' x 3 skipped
        for r, g in zip(ref, got, strict=True):
            assert torch.equal(r[1], g[1]) and torch.equal(r[2], g[2])
    # speed perturbation differs between the epochs (a different factor for some utterance)
    assert [r[1].shape for r in ref0] != [r[1].shape for r in ref1] or any(
        not torch.equal(a[1], b[1]) for a, b in zip(ref0, ref1, strict=False)
    )


def test_pin_memory_pins_every_tensor(monkeypatch):
    # CPU-only torch cannot pin; record the calls instead (DataLoader(pin_memory=True) calls
    # Batch.pin_memory() on each batch in its pinning thread)
    pinned = []

    def fake_pin(self, *args, **kwargs):
        pinned.append(self)
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    b = collate([_sample("x", [0.5, -0.5], [3, 4, 5]), None])
    p = b.pin_memory()
    assert isinstance(p, Batch) and p.ids == ["x"] and p.skipped == 1
    assert [t.data_ptr() for t in pinned] == [
        t.data_ptr() for t in (b.waves, b.wave_lens, b.tokens, b.token_lens)
    ]
    assert torch.equal(p.waves, b.waves) and torch.equal(p.token_lens, b.token_lens)


def test_untokenizable_transcript_names_the_utterance(corpus):
    utts, _ = corpus
    ds = SpeechDataset([utts[0].with_(text="hi 2")], CharTokenizer(), SR)
    with pytest.raises(ValueError, match="utterance a: .*speechswarm validate"):
        ds[0]


def test_dataset_applies_the_factor_the_sampler_batched_on(corpus):
    utts, _ = corpus
    factors = (0.9, 1.0, 1.1)
    ds = SpeechDataset(utts * 20, CharTokenizer(), SR, speed_factors=factors, seed=7)
    sampler = BucketBatchSampler([u.duration for u in ds.utts], 1.0, speed_factors=factors, seed=7)
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        got = np.array([u.duration / ds.speed_factor(i) for i, u in enumerate(ds.utts)])
        np.testing.assert_allclose(got, sampler.epoch_durations(), rtol=1e-12)


def test_loaded_batches_pad_under_five_percent_with_speed_perturbation(tmp_path):
    """The real path: files -> speed perturbation -> collate. Padded share of the samples of
    one shuffled epoch, batching on perturbed durations vs on manifest durations."""
    rng = np.random.default_rng(0)
    utts = []
    for k, n in enumerate(rng.integers(1600, 9600, 150)):  # 0.1-0.6 s
        _write(tmp_path / f"u{k}.wav", int(n), k)
        utts.append(Utterance(f"u{k}", str(tmp_path / f"u{k}.wav"), int(n) / SR, "a"))
    factors = (0.9, 1.0, 1.1)

    def loaded_padding(speed_factors) -> float:
        ds = SpeechDataset(utts, CharTokenizer(), SR, speed_factors=factors, seed=2)
        sampler = BucketBatchSampler(
            [u.duration for u in utts], 3.0, speed_factors=speed_factors, seed=2
        )
        sampler.set_epoch(1)
        ds.set_epoch(1)
        used = occupied = 0
        for batch in make_loader(ds, sampler, num_workers=0):
            used += int(batch.wave_lens.sum())
            occupied += batch.waves.numel()
        return 1 - used / occupied

    assert loaded_padding(factors) <= 0.05
    assert loaded_padding(()) > 0.08  # batches on manifest durations, perturbed afterwards
