import inspect
import json
import math

import pytest
import torch
import torch.nn.functional as F

from speechswarm import frames
from speechswarm.build import build_model
from speechswarm.config import load_config, preset_names
from speechswarm.decode.greedy import greedy_decode
from speechswarm.frames import conv_output_length
from speechswarm.model import DeepSpeech2, model_from_settings

# The model sections of the shipped presets (src/speechswarm/configs/*.yaml).
PRESETS = {name: load_config(name).model for name in preset_names()}


@pytest.fixture(autouse=True)
def _one_thread():
    # These models are tiny: on a shared 2-core machine a second OpenMP thread mostly waits
    # (measured: 300 small forwards 13.5 s with 2 threads under load, 2.5 s with 1).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _small(**overrides) -> DeepSpeech2:
    """A model with a preset-like conv stack but tiny widths, for fast shape tests."""
    kw = dict(conv_channels=(4, 4), rnn_hidden=8, rnn_layers=2)
    kw.update(overrides)
    return DeepSpeech2(num_features=kw.pop("num_features", 32), vocab_size=6, **kw)


_CONV_STACKS = {(p.conv_kernels, p.conv_strides) for p in PRESETS.values()}


@pytest.mark.parametrize("kernels,strides", sorted(_CONV_STACKS))
def test_output_lengths_match_forward_for_every_length(kernels, strides):
    torch.manual_seed(0)
    model = DeepSpeech2(
        num_features=16,
        vocab_size=3,
        conv_channels=(1,) * len(kernels),
        conv_kernels=kernels,
        conv_strides=strides,
        rnn_hidden=2,
        rnn_layers=1,
    ).eval()
    reduction = math.prod(s for _, s in strides)
    with torch.no_grad():
        for t in range(1, 301):
            log_probs, out_lens = model(torch.randn(1, t, 16), torch.tensor([t]))
            expected = model.output_lengths(t)
            assert log_probs.shape[1] == out_lens.item() == expected, t
            # Odd kernels padded k // 2 give ceil(T / stride) per layer, so ceil(T / total).
            assert expected == math.ceil(t / reduction) >= 1, t
    lens = torch.arange(1, 301)
    assert torch.equal(model.output_lengths(lens), -(-lens // reduction))


def test_output_lengths_hand_computed():
    model = _small()  # default stack: time kernels 11, 11; strides 2, 1; padding 5, 5
    assert model.output_lengths(1) == 1  # (1 + 10 - 11) // 2 + 1 = 1, then (1 + 10 - 11) + 1
    assert model.output_lengths(100) == 50
    assert model.output_lengths(101) == 51
    assert conv_output_length(0, 11, 2, 5) == 0  # T = 0 gives nothing: rejected in forward
    assert model.time_reduction == 2
    assert model.receptive_field() == 1 + 10 * 1 + 10 * 2
    assert PRESETS["dl-audio"].conv_strides[2] == (2, 1)


def test_frame_arithmetic_needs_no_model():
    kernels, strides = ((41, 11), (21, 11), (21, 11)), ((2, 2), (2, 1), (2, 1))
    assert frames.time_reduction(strides) == 2
    assert frames.time_reduction(((2, 2), (4, 3))) == 6
    assert frames.time_reduction(((2, 2), (2, 2)), output_upsample=2) == 2
    assert frames.output_length(1, kernels, strides) == 1
    assert frames.output_length(101, kernels, strides) == 51  # ceil(101 / 2)
    assert frames.receptive_field(kernels, strides) == 1 + 10 * 1 + 10 * 2 + 10 * 2
    model = DeepSpeech2(
        16, 3, conv_channels=(1, 1, 1), conv_kernels=kernels, conv_strides=strides, rnn_hidden=2
    )
    assert model.time_reduction == frames.time_reduction(strides)
    assert model.receptive_field() == frames.receptive_field(kernels, strides)


def test_output_upsample_gives_u_frames_per_recurrent_frame():
    """Time stride 4 and u = 2: 2 * ceil(T / 4) output frames, the recurrent layers see
    ceil(T / 4), and output frames 2j, 2j + 1 are the classifier's two halves at frame j."""
    torch.manual_seed(0)
    model = _small(conv_strides=((2, 2), (2, 2)), output_upsample=2).eval()
    assert model.time_reduction == 2 and model.classifier.out_features == 2 * 6
    with torch.no_grad():
        for t in (1, 2, 3, 4, 5, 37, 80):
            log_probs, out_lens = model(torch.randn(1, t, 32), torch.tensor([t]))
            assert log_probs.shape[1] == out_lens.item() == model.output_lengths(t)
            assert model.output_lengths(t) == 2 * math.ceil(t / 4), t
        seen = {}
        model.classifier.register_forward_hook(lambda m, i, o: seen.update(logits=o))
        log_probs, _ = model(torch.randn(1, 40, 32), torch.tensor([40]))
    halves = seen["logits"].reshape(1, 10, 2, 6).float().log_softmax(-1).reshape(1, 20, 6)
    torch.testing.assert_close(log_probs, halves)
    plain = _small(conv_strides=((2, 2), (2, 2)))
    classifier_flops = 2 * 8 * 6 * 100 / 4
    assert model.flops_per_second() - plain.flops_per_second() == pytest.approx(classifier_flops)
    assert model_from_settings(model.settings()).settings() == model.settings()
    with pytest.raises(
        ValueError, match=r"output_upsample must be >= 1 and divide .* \(4\), got 3"
    ):
        _small(conv_strides=((2, 2), (2, 2)), output_upsample=3)
    with pytest.raises(ValueError, match="output_upsample"):
        _small(output_upsample=0)


@pytest.mark.parametrize("upsample", [1, 2])
def test_intermediate_ctc_reads_the_normalised_input_of_the_next_layer(upsample):
    """intermediate=(k,): the classifier's log-probabilities on the BatchNorm'd output of
    recurrent layer k; the final output is unchanged, and layers above k do not touch them."""
    torch.manual_seed(0)
    model = _small(
        rnn_layers=3, conv_strides=((2, 2), (2, 2)), output_upsample=upsample, dropout=0.2
    ).eval()
    feats, lens = torch.randn(2, 40, 32), torch.tensor([40, 23])
    with torch.no_grad():
        final, out_lens = model(feats, lens)
        again, again_lens, inter = model(feats, lens, intermediate=(1, 2))
        torch.testing.assert_close(again, final)
        assert torch.equal(again_lens, out_lens) and len(inter) == 2
        for lp in inter:
            assert lp.shape == final.shape and lp.dtype == torch.float32
            assert torch.allclose(lp.exp().sum(-1), torch.ones(2, lp.shape[1]))
        # by hand for k = 2: layers 0-1, the norm that feeds layer 2, the shared classifier
        seen = {}
        model.rnn_norms[1].register_forward_hook(lambda m, i, o: seen.update(normed=o))
        model(feats, lens, intermediate=(2,))
        logits = model.classifier(seen["normed"])  # the valid frames, utterance after utterance
        t = int(out_lens[0]) // upsample
        expected = logits[:t].reshape(t * upsample, -1).log_softmax(-1)
        _, _, (lp2,) = model(feats, lens, intermediate=(2,))
        torch.testing.assert_close(lp2[0, : t * upsample], expected)
        model.rnns[2].weight_hh_l0.add_(1.0)  # above the tap: the final output moves, k = 2 not
        moved, _, (still,) = model(feats, lens, intermediate=(2,))
    assert not torch.allclose(moved, final)
    torch.testing.assert_close(still, inter[1])
    for bad in [(0,), (3,)]:
        with pytest.raises(ValueError, match=r"intermediate CTC layers must lie in 1\.\.2"):
            model(feats, lens, intermediate=bad)


def test_invalid_inputs_fail_with_clear_errors():
    model = _small()
    with pytest.raises(ValueError, match=r"feat_lens must lie in 1\.\.5"):
        model(torch.zeros(2, 5, 32), torch.tensor([5, 0]))
    with pytest.raises(ValueError, match=r"feats must be \(N, T, 32\)"):
        model(torch.zeros(2, 5, 40), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="num_features must be >= 1"):
        build_model(PRESETS["tiny"], 0, 29)
    assert build_model(PRESETS["tiny"], 1, 29).conv_out_freq == 1  # k // 2 padding
    with pytest.raises(ValueError, match="rnn_type must be one of"):
        _small(rnn_type="transformer")
    with pytest.raises(ValueError, match="one \\(freq, time\\) pair per conv layer"):
        _small(conv_kernels=((41, 11),))


def test_params_and_flops_hand_computed():
    model = DeepSpeech2(
        num_features=8,
        vocab_size=5,
        conv_channels=(2,),
        conv_kernels=((3, 3),),
        conv_strides=((2, 1),),
        rnn_hidden=4,
        rnn_layers=1,
    )
    # conv 1*2*3*3 (no bias) + BN2d 2*2; F' = (8 + 2 - 3) // 2 + 1 = 4 -> GRU input 2*4 = 8;
    # GRU per direction 3*4*8 + 3*4*4 + 2*3*4 = 168, two directions; BN1d 2*4; Linear 4*5 + 5.
    assert model.num_params() == 18 + 4 + 2 * 168 + 8 + 25
    # per second at 100 frames/s, time stride 1: conv 2*1*2*3*3*4*100, GRU 2*3*(8*4 + 4*4)*2*100,
    # classifier 2*4*5*100.
    assert model.flops_per_second() == pytest.approx(14_400 + 57_600 + 4_000)
    assert model.flops_per_second(50.0) == pytest.approx((14_400 + 57_600 + 4_000) / 2)
    assert "0.00 M params, 0.00 GFLOP per audio second" in model.describe()
    assert "conv receptive field 3 frames (30 ms)" in model.describe()


def _pad_batch(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([f.shape[0] for f in feats])
    out = torch.zeros(len(feats), int(lens.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
    return out, lens


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # BiGRU, directions summed
        {"bidirectional_merge": "concat", "rnn_type": "lstm"},
        {"bidirectional": False, "lookahead": 3, "rnn_type": "rnn"},
        {
            "conv_channels": (2, 2, 3),
            "conv_kernels": ((5, 3), (5, 3), (3, 5)),
            "conv_strides": ((2, 2), (1, 2), (2, 1)),
        },
        {"conv_strides": ((2, 2), (2, 2)), "output_upsample": 2},
    ],
)
@pytest.mark.parametrize("packing", ["padded", "packed"])
def test_outputs_do_not_depend_on_batch_neighbours(overrides, packing):
    torch.manual_seed(0)
    model = _small(**overrides)
    model.rnn_packing = packing
    with torch.no_grad():  # give BatchNorm non-trivial running statistics, then freeze it
        model(torch.randn(4, 50, 32) * 3 + 1, torch.tensor([50, 40, 30, 20]))
    model.eval()
    short, long_ = torch.randn(23, 32), torch.randn(97, 32)
    alone, alone_lens = model(short[None], torch.tensor([23]))
    feats, lens = _pad_batch([long_, short])
    feats[1, 23:] = 1e3  # garbage in the padding must not matter either
    batched, batched_lens = model(feats, lens)
    n = int(alone_lens[0])
    assert int(batched_lens[1]) == n
    torch.testing.assert_close(batched[1, :n], alone[0, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"bidirectional_merge": "concat", "rnn_type": "lstm"}])
def test_packed_and_padded_recurrent_paths_agree_with_gradients(overrides):
    torch.manual_seed(0)
    model = _small(**overrides)
    feats, lens = torch.randn(3, 41, 32), torch.tensor([41, 30, 7])
    results = []
    for packing in ("packed", "padded"):
        model.rnn_packing = packing
        model.zero_grad()
        log_probs, out_lens = model(feats, lens)  # train mode: batch statistics
        mask = torch.arange(log_probs.shape[1])[None, :] < out_lens[:, None]
        log_probs[mask].sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((log_probs[mask].detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    for g_packed, g_padded in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g_packed, g_padded, atol=1e-4, rtol=1e-4)


def _profile(fn) -> dict[str, int]:
    """Op name -> calls while `fn()` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.count for e in prof.key_averages()}


@pytest.mark.parametrize("rnn_type", ["gru", "lstm"])
def test_padded_path_casts_recurrent_weights_once_under_autocast(rnn_type):
    """Unpadded utterances: the padded per-direction path is the bidirectional module itself,
    bit for bit in fp32 and within bf16 rounding under autocast. There, in inference, it
    casts the weights once per call, not once per time step (inference_mode has no cast
    cache), and projects the input with one GEMM, not T batched ones on copies of it."""
    from speechswarm.recurrence import run_rnn_padded

    torch.manual_seed(0)
    cls = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[rnn_type]
    rnn = cls(12, 16, bidirectional=True, batch_first=True)
    twin = cls(12, 16, batch_first=True, device="meta")

    def run(x):
        return run_rnn_padded(rnn, twin, x, torch.ones(x.shape[:2], dtype=torch.bool))

    x = torch.randn(3, 60, 12)
    with torch.inference_mode():
        assert torch.equal(run(x), rnn(x)[0])  # fp32: untouched
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x16 = x.bfloat16()  # as the model feeds it: conv output under autocast
            ours, theirs = run(x16), rnn(x16)[0]
            assert ours.dtype == theirs.dtype == torch.bfloat16
            torch.testing.assert_close(ours.float(), theirs.float(), atol=2e-2, rtol=2e-2)
            ops = {t: _profile(lambda t=t: run(x16[:, :t])) for t in (20, 60)}
    casts = [ops[t].get("aten::_to_copy", 0) for t in (20, 60)]
    assert casts[0] == casts[1] <= 12  # 4 tensors per direction (+ the input), not per step
    assert "aten::bmm" not in ops[60]
    # Training under autocast: the same gradients as the module's own (autocast caches casts).
    grads = []
    for fn in (run, lambda x: rnn(x)[0]):
        rnn.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fn(x).float().square().sum().backward()
        grads.append([p.grad.clone() for p in rnn.parameters()])
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-2, rtol=2e-2)


def test_lookahead_sees_exactly_the_promised_future():
    torch.manual_seed(0)
    model = DeepSpeech2(
        num_features=8,
        vocab_size=5,
        conv_channels=(2,),
        conv_kernels=((3, 1),),
        conv_strides=((1, 1),),
        rnn_hidden=6,
        rnn_layers=2,
        bidirectional=False,
        lookahead=2,
    ).eval()  # time kernel 1, stride 1: output frame t is input frame t
    feats = torch.randn(1, 20, 8)
    base, _ = model(feats, torch.tensor([20]))
    feats[0, 10] += 5.0
    moved, _ = model(feats, torch.tensor([20]))
    changed = (moved - base).abs().amax(-1)[0] > 1e-6  # (T,)
    assert changed.nonzero()[0].item() == 8  # frame 10 reaches back exactly 2 frames
    assert _small(bidirectional=True, lookahead=5).lookahead is None


def test_log_probs_are_normalised_float32_also_under_bf16_autocast():
    torch.manual_seed(0)
    model = _small()
    feats, lens = torch.randn(2, 30, 32), torch.tensor([30, 18])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_probs, out_lens = model(feats, lens)
    assert log_probs.dtype == torch.float32 and out_lens.dtype == torch.int64
    torch.testing.assert_close(log_probs.logsumexp(-1), torch.zeros(2, 15), atol=1e-5, rtol=0)


def test_settings_round_trip_through_json():
    torch.manual_seed(0)
    model = build_model(PRESETS["p2p-ds2"], 40, 7).eval()
    settings = json.loads(json.dumps(model.settings()))
    assert settings["conv_kernels"] == [[41, 11], [21, 11]]
    assert settings["bidirectional_merge"] == "concat" and settings["num_features"] == 40
    params = inspect.signature(DeepSpeech2.__init__).parameters
    assert set(settings) == set(params) - {"self"}  # every constructor argument travels
    rebuilt = model_from_settings(settings).eval()
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.settings() == model.settings()
    feats, lens = torch.randn(2, 25, 40), torch.tensor([25, 11])
    torch.testing.assert_close(rebuilt(feats, lens)[0], model(feats, lens)[0])
    with pytest.raises(ValueError, match="unknown key"):
        model_from_settings({**settings, "hidden": 3})


def test_tiny_model_overfits_a_few_utterances_and_greedy_decode_recovers_them():
    """Guards model + CTC loss + greedy decoding together (eval mode, running BN stats)."""
    torch.manual_seed(0)
    targets = [[1, 2, 3, 3, 4], [5, 5, 1, 2], [2, 4, 1, 5, 3, 2]]  # repeats need a blank
    feat_lens = torch.tensor([40, 32, 48])
    feats = torch.randn(3, 48, 40)
    feats *= (torch.arange(48)[None, :] < feat_lens[:, None])[..., None]  # zero padding
    tokens = torch.tensor([t + [0] * (6 - len(t)) for t in targets])
    token_lens = torch.tensor([len(t) for t in targets])
    model = build_model(PRESETS["tiny"], 40, 6)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, decoded = [], None
    for step in range(1, 151):
        model.train()
        log_probs, out_lens = model(feats, feat_lens)
        loss = F.ctc_loss(log_probs.transpose(0, 1), tokens, out_lens, token_lens)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                decoded = greedy_decode(*model(feats, feat_lens))
            if decoded == targets and losses[-1] < 0.2 * losses[0]:
                break
    assert losses[-1] < 0.2 * losses[0], losses[::10]
    assert decoded == targets


def test_the_seeds_head_relu_and_batchnorm_momentum():
    """The P2P seed's Keras DeepSpeech2: ReLU after the convs, Dense(2u) + ReLU + Dropout
    before the classifier, no BatchNorm on the classifier's input, Keras momentum 0.99."""
    from speechswarm.model import DeepSpeech2, model_from_settings

    m = DeepSpeech2(193, 29, rnn_hidden=16, rnn_layers=1, bidirectional_merge="concat",
                    activation="relu", head_hidden=32, out_norm=False, bn_momentum=0.01,
                    dropout=0.5)  # fmt: skip
    assert isinstance(m.conv[0][2], torch.nn.ReLU)
    assert [type(x).__name__ for x in m.head] == ["Linear", "ReLU", "Dropout"]
    assert m.head[0].in_features == 32 and m.classifier.in_features == 32
    assert isinstance(m.out_norm, torch.nn.Identity)
    norms = [x for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(x.momentum == 0.01 for x in norms)
    m.eval()
    log_probs, out_lens = m(torch.randn(2, 50, 193), torch.tensor([50, 30]))
    assert log_probs.shape[:2] == (2, 25) and torch.isfinite(log_probs).all()
    assert model_from_settings(m.settings()).settings() == m.settings()
    plain = DeepSpeech2(193, 29, rnn_hidden=16, rnn_layers=1, bidirectional_merge="concat")
    head_flops = m.flops_per_second() - plain.flops_per_second()
    assert head_flops == pytest.approx(2 * 100 / 2 * (32 * 32 + 32 * 29 - 32 * 29))


def test_settings_written_before_an_option_existed_still_match():
    from speechswarm.model import DeepSpeech2, complete_settings

    m = DeepSpeech2(80, 29, rnn_hidden=16, rnn_layers=1)
    old = {k: v for k, v in m.settings().items() if k not in ("activation", "head_hidden",
                                                               "out_norm", "bn_momentum",
                                                               "output_upsample")}  # fmt: skip
    assert complete_settings(old) == m.settings()


def test_the_p2p_ds2_preset_is_the_seeds_model():
    from speechswarm.build import build_features, build_model
    from speechswarm.config import load_config

    cfg = load_config("p2p-ds2")
    extractor = build_features(cfg.features, cfg.data.sample_rate)
    model = build_model(cfg.model, extractor.num_features, 29)
    assert extractor.num_features == 193 and cfg.optim.grad_clip == 0
    assert model.settings()["activation"] == "relu" and model.head[0].out_features == 1024
    assert isinstance(model.out_norm, torch.nn.Identity)
    assert cfg.data.speed_factors == () and not cfg.augment.freq_masks
