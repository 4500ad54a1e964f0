"""Streaming recognition: chunked audio gives the whole clip's features, frames and text.

    .venv/bin/python -m pytest tests/test_streaming.py -q

The models are small and untrained, with random weights and BatchNorm statistics scaled so
that the argmax changes from frame to frame: a transcript then has many letters, and any frame
computed from the wrong context would change it.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from speechswarm.data.tokenizer import CharTokenizer
from speechswarm.errors import UsageError
from speechswarm.features import FeatureExtractor
from speechswarm.inference import Recognizer
from speechswarm.model import DeepSpeech2
from speechswarm.streaming import StreamingRecognizer

SR = 16000


def make_checkpoint(
    *, kernels=((21, 5), (11, 5)), strides=((2, 2), (2, 1)), lookahead=3, rnn="lstm", **kw
) -> dict:
    torch.manual_seed(0)
    features = dict(kind="logmel", n_mels=40, normalize="global")
    features.update(kw.pop("features", {}))
    if features["normalize"] == "global":
        features.update(mean=(torch.randn(40) - 8).tolist(), std=(torch.rand(40) + 2).tolist())
    extractor = FeatureExtractor(**features)
    model = DeepSpeech2(
        40,
        29,
        conv_channels=(4,) * len(kernels),
        conv_kernels=kernels,
        conv_strides=strides,
        rnn_type=rnn,
        rnn_hidden=32,
        rnn_layers=2,
        bidirectional=kw.pop("bidirectional", False),
        lookahead=lookahead,
        output_upsample=kw.pop("upsample", 1),
    )
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.dim() > 1:
                param.normal_(0.0, {"conv": 0.1, "rnns": 0.2}.get(name.split(".")[0], 1.0))
        model.classifier.bias[0] = -3.0  # fewer blanks: more letters to get right
        model.out_norm.running_mean.zero_()
    return {
        "tokenizer": CharTokenizer().to_dict(),
        "features": extractor.feature_settings(),
        "model_settings": model.settings(),
        "model": model.state_dict(),
    }


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Tones that change every 80 ms plus noise: features that vary over time."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    freqs = np.repeat(rng.uniform(150, 3000, n // 1280 + 1), 1280)[:n]
    wave = 0.3 * np.sin(2 * np.pi * freqs * t) + 0.05 * rng.standard_normal(n)
    return wave.astype(np.float32)


def stream_text(stream: StreamingRecognizer, wave: np.ndarray, chunk: int) -> tuple[str, list]:
    partials = [stream.feed(wave[i : i + chunk]) for i in range(0, len(wave), chunk)]
    return stream.finish(), partials


@pytest.fixture(scope="module")
def checkpoint() -> dict:
    return make_checkpoint()


@pytest.mark.parametrize("chunk", [2560, 1, 159, 1601, 4999, 10**6])
def test_final_text_equals_the_whole_clip_transcript(checkpoint, chunk, one_torch_thread):
    whole = Recognizer(checkpoint, device="cpu", precision="fp32")
    stream = StreamingRecognizer(Recognizer(checkpoint, device="cpu", precision="fp32"))
    wave = speechlike(1.37 if chunk > 1 else 0.23)
    expected = whole.transcribe(wave)
    assert len(expected) > 3  # the argmax really changes along the clip
    final, partials = stream_text(stream, wave, chunk)
    assert final == expected
    for earlier, later in itertools.pairwise([*partials, final]):  # partials only grow
        assert later.startswith(earlier)
    assert any(partials) if chunk < len(wave) else not any(partials[:-1])


def test_log_probs_match_frame_by_frame(checkpoint, one_torch_thread):
    asr = Recognizer(checkpoint, device="cpu", precision="fp32")
    wave = speechlike(2.0, seed=1)
    log_probs, out_lens, _ = asr._forward([wave], None)
    stream = StreamingRecognizer(Recognizer(checkpoint, device="cpu", precision="fp32"))
    for i in range(0, len(wave), 777):
        stream.feed(wave[i : i + 777])
    with torch.inference_mode():
        stream._step(stream.features.finish(), last=True)
    got = torch.cat(stream.log_probs).numpy()
    assert got.shape == log_probs[0].shape == (int(out_lens[0]), 29)
    np.testing.assert_allclose(got, log_probs[0], atol=1e-4)


@pytest.mark.parametrize(
    "kernels,strides,lookahead,rnn,upsample",
    [
        (((41, 11), (21, 11)), ((2, 2), (2, 1)), 0, "gru", 1),  # tiny's conv stack, no lookahead
        (((11, 3),), ((2, 3),), 1, "rnn", 1),  # one layer, stride 3
        (((11, 4), (5, 6), (3, 3)), ((2, 2), (1, 2), (1, 1)), 2, "gru", 1),  # even kernels
        (((21, 5), (11, 5)), ((2, 2), (2, 2)), 3, "lstm", 2),  # stride 4, 2 frames per step
    ],
)
def test_other_conv_stacks_stream_exactly(
    kernels, strides, lookahead, rnn, upsample, one_torch_thread
):
    ckpt = make_checkpoint(
        kernels=kernels, strides=strides, lookahead=lookahead, rnn=rnn, upsample=upsample
    )
    wave = speechlike(0.91, seed=2)
    expected = Recognizer(ckpt, device="cpu", precision="fp32").transcribe(wave)
    stream = StreamingRecognizer(Recognizer(ckpt, device="cpu", precision="fp32"))
    for chunk in (333, 2560):
        assert stream_text(stream, wave, chunk)[0] == expected


def test_a_frame_waits_exactly_for_its_right_context(checkpoint, one_torch_thread):
    stream = StreamingRecognizer(Recognizer(checkpoint, device="cpu", precision="fp32"))
    assert stream.right_context == 2 * 2 + 2 + 3 * 2  # conv reach + lookahead x stride
    hop, n_fft, reduction = 160, 320, 2
    for samples in (3200, 4000, 4321):
        stream.reset()
        stream.feed(speechlike(samples / SR))
        feat_frames = (samples + n_fft // 2 - n_fft) // hop + 1  # complete windows
        want = (feat_frames - 1 - stream.right_context) // reduction + 1
        assert stream.frames_done == want


def test_right_context_is_what_the_model_reads(one_torch_thread):
    """Changing input frame j*r + right_context changes output frame j; one frame later does not."""
    ckpt = make_checkpoint()
    model = DeepSpeech2(**ckpt["model_settings"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    rc, j = model.right_context(), 10
    feats = torch.randn(1, 80, 40)
    base = model(feats, torch.tensor([80]))[0][0, j]
    for offset, changes in ((rc, True), (rc + 1, False)):
        moved = feats.clone()
        moved[0, j * model.time_reduction + offset] += 5.0
        out = model(moved, torch.tensor([80]))[0][0, j]
        assert (not torch.allclose(out, base)) == changes
    bi = DeepSpeech2(40, 29, conv_channels=(4,), conv_kernels=((5, 5),), conv_strides=((1, 1),))
    assert bi.right_context() is None


def test_models_that_need_the_whole_clip_are_refused():
    for kw, word in (({"bidirectional": True}, "bidirectional"), ({}, "per utterance")):
        if not kw:
            kw = {"features": {"normalize": "utterance"}}
        ckpt = make_checkpoint(**kw)
        with pytest.raises(UsageError, match=word):
            StreamingRecognizer(Recognizer(ckpt, device="cpu", precision="fp32"))


def test_empty_and_tiny_clips(checkpoint, one_torch_thread):
    stream = StreamingRecognizer(Recognizer(checkpoint, device="cpu", precision="fp32"))
    assert stream.finish() == ""
    whole = Recognizer(checkpoint, device="cpu", precision="fp32")
    for n in (1, 100, 161, 480):
        wave = speechlike(n / SR)
        assert stream.feed(wave) == ""
        assert stream.finish() == whole.transcribe(wave)
    with pytest.raises(UsageError, match="1-D"):
        stream.feed(np.zeros((2, 10), np.float32))


def test_chunked_features_equal_whole_clip_features():
    extractor = FeatureExtractor(kind="mfcc", normalize="none")
    wave = torch.from_numpy(speechlike(0.5, seed=3))
    whole, _ = extractor(wave[None], torch.tensor([len(wave)]))  # (1, T, F)
    from speechswarm.streaming import _FeatureStream

    fs = _FeatureStream(extractor)
    parts = [fs.feed(wave[i : i + 700]) for i in range(0, len(wave), 700)] + [fs.finish()]
    chunked = torch.cat(parts, dim=1).T  # (T, F)
    torch.testing.assert_close(chunked, whole[0], atol=1e-4, rtol=1e-4)


def test_a_recognizer_off_the_cpu_is_refused(checkpoint):
    asr = Recognizer(checkpoint, device="cpu", precision="fp32")
    asr.device = torch.device("cuda")  # as Recognizer(device="cuda") would set it
    with pytest.raises(UsageError, match="device='cpu'"):
        StreamingRecognizer(asr)


def test_partials_collapse_like_the_whole_path(checkpoint, one_torch_thread):
    """The incremental CTC collapse equals ctc_collapse of every final frame, at every chunk."""
    from speechswarm.decode.greedy import ctc_collapse

    stream = StreamingRecognizer(Recognizer(checkpoint, device="cpu", precision="fp32"))
    wave = speechlike(1.5, seed=4)
    for i in range(0, len(wave), 211):  # steps of 0 or 1 output frames: runs cross steps
        stream.feed(wave[i : i + 211])
        assert stream.ids == ctc_collapse(stream.path)
