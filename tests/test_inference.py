"""The Python API a user transcribes with: `speechswarm.load(ckpt).transcribe(...)`.

    .venv/bin/python -m pytest tests/test_inference.py -q

The checkpoint is the session's `overfit_run` (tests/conftest.py): a tiny model that has
memorised 6 utterances, so its transcripts are real words and comparisons between input
paths mean something (an untrained model emits near-empty strings that trivially agree).
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

import speechswarm
from speechswarm.data.audio import AudioError
from speechswarm.data.manifest import read_manifest
from speechswarm.metrics import cer

# Every test here needs the ~25 s overfit_run fixture.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def asr(overfit_run):
    return speechswarm.load(overfit_run.checkpoint)


@pytest.fixture(scope="module")
def utts(overfit_run):
    return read_manifest(overfit_run.manifest)


def test_file_array_and_tensor_give_the_same_text(asr, utts):
    for u in utts[:3]:
        wave, rate = sf.read(u.audio, dtype="float32")  # (S,) at 16 kHz
        assert rate == asr.sample_rate == 16000
        text = asr.transcribe(u.audio)
        assert cer([u.text], [text]) < 0.2  # it is the memorised transcript
        assert asr.transcribe(wave) == text
        assert asr.transcribe(torch.from_numpy(wave)) == text
        assert asr.transcribe(wave, sample_rate=16000) == text
        # stereo either way round is down-mixed
        assert asr.transcribe(np.stack([wave, wave])) == text
        assert asr.transcribe(np.stack([wave, wave], axis=1)) == text


def test_other_sample_rates_are_resampled(asr, utts):
    """44.1 kHz audio gives exactly the 16 kHz text. 8 kHz audio is resampled with soxr
    (same text as resampling it yourself) and reads better than the same samples taken as
    16 kHz; it does not give the 16 kHz text: this model only ever heard full-band speech and
    8 kHz audio has nothing above 4 kHz (measured CER vs the 16 kHz text: 0.3-0.9)."""
    refs, hyps_8k, hyps_wrong_rate = [], [], []
    for u in utts:
        wave, _ = sf.read(u.audio, dtype="float32")
        text = asr.transcribe(wave)
        wave_44k = soxr.resample(wave, 16000, 44100)
        assert asr.transcribe(wave_44k, sample_rate=44100) == text
        wave_8k = soxr.resample(wave, 16000, 8000)
        hyp = asr.transcribe(wave_8k, sample_rate=8000)
        assert hyp == asr.transcribe(soxr.resample(wave_8k, 8000, 16000))
        refs.append(u.text)
        hyps_8k.append(hyp)
        hyps_wrong_rate.append(asr.transcribe(wave_8k))  # played at double speed
    assert cer(refs, hyps_8k) < cer(refs, hyps_wrong_rate)


def test_batch_gives_the_same_texts_as_one_by_one(asr, utts):
    paths = [u.audio for u in utts]  # 1.2-2.2 s: the batch pads all but the longest
    one_by_one = [asr.transcribe(p) for p in paths]
    assert asr.transcribe_batch(paths) == one_by_one
    assert asr.transcribe_batch(paths[::-1]) == one_by_one[::-1]
    assert cer([u.text for u in utts], one_by_one) < 0.1


def test_bad_inputs_fail_clearly(asr, tmp_path):
    with pytest.raises(ValueError, match="non-empty mono waveform"):
        asr.transcribe(np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError) as missing:
        asr.transcribe(tmp_path / "missing.flac")
    assert missing.value.reason == "missing_file"
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    with pytest.raises(AudioError) as unreadable:
        asr.transcribe(corrupt)
    assert unreadable.value.reason == "unreadable_audio"


def test_the_checkpoint_alone_rebuilds_the_recognizer(asr, overfit_run):
    """Features, vocabulary and model come from the checkpoint, not from a config."""
    cfg = overfit_run.config
    assert asr.tokenizer.tokens[1:] == list(cfg.tokenizer.alphabet)
    assert asr.extractor.num_features == 161  # the spectrogram front-end of the overfit model
    assert asr.model.settings()["rnn_hidden"] == cfg.model.rnn_hidden
    assert not asr.model.training


def test_beam_decoder_option_reads_like_greedy_on_memorised_audio(overfit_run, utts, tmp_path):
    """A model that knows its 6 utterances by heart: prefix beam search (no LM) agrees
    with greedy decoding, and an LM of exactly these sentences keeps every word."""
    from speechswarm.decode import DecoderOptions
    from speechswarm.decode.lm import build_lm
    from speechswarm.inference import load
    from speechswarm.metrics import wer

    paths = [u.audio for u in utts]
    greedy = speechswarm.load(overfit_run.checkpoint).transcribe_batch(paths)
    beam = load(overfit_run.checkpoint, decoder=DecoderOptions("beam"))
    assert cer(greedy, beam.transcribe_batch(paths)) < 0.02
    build_lm([u.text.split() for u in utts], 3, tmp_path / "lm.arpa")
    with_lm = load(overfit_run.checkpoint, decoder=DecoderOptions("beam", lm=tmp_path / "lm.arpa"))
    refs = [u.text for u in utts]
    assert wer(refs, with_lm.transcribe_batch(paths)) <= wer(refs, greedy)


def test_a_checkpoint_with_nan_weights_is_refused_by_name(overfit_run, tmp_path):
    from speechswarm.checkpoint import CheckpointError

    ckpt = torch.load(overfit_run.checkpoint, weights_only=True)
    name = next(k for k in ckpt["model"] if k.endswith("running_mean"))
    ckpt["model"][name] = torch.full_like(ckpt["model"][name], float("nan"))
    broken = tmp_path / "broken.pt"
    torch.save(ckpt, broken)
    with pytest.raises(CheckpointError, match=rf"NaN or infinite values in 1 .*{name}.*step-") as e:
        speechswarm.load(broken)
    assert e.value.reason == "nonfinite_weights"
