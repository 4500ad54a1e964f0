"""`speechswarm bench profile`: the breakdown's categories, oneDNN's verbose lines counted, and
both modes run as a user types them on a tiny GRU model.

    .venv/bin/python -m pytest tests/benchmark/test_profile.py -q
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import speechswarm.cli as cli
from speechswarm.benchmark.profile import _verbose_rows, breakdown, category

# a 1-layer BiGRU 32 behind tiny's conv stack, one thread, one loader worker: seconds a step
OVERRIDES = [
    "model.rnn_type=gru",
    "model.conv_channels=[4,4]",
    "model.rnn_hidden=32",
    "model.rnn_layers=1",
    "train.inter_ctc_layers=[]",  # one layer: no intermediate CTC
    "train.num_threads=1",
    "data.num_workers=1",
    "data.max_batch_seconds=20",
]


def _event(name: str, parent=None, self_us: float = 0.0):
    return SimpleNamespace(name=name, cpu_parent=parent, self_cpu_time_total=self_us)


def test_category_prefers_the_kernels_ranges_then_the_nearest_op():
    step = _event("fused_gru::step_gemm", _event("_FusedGRU"))
    assert category(_event("aten::mm", step)) == "GRU recurrent GEMMs (per step)"
    assert category(_event("aten::copy_", _event("_FusedGRU"))) == "copies, casts, gathers, masks"
    conv_bwd = _event("autograd::engine::evaluate_function: ConvolutionBackward0")
    assert category(_event("aten::empty", conv_bwd)) == "convolutions"
    assert category(_event("aten::mm")) == "other GEMMs"
    adamw = _event("Optimizer.step#AdamW.step")
    assert category(_event("aten::mul_", adamw)) == "optimizer + clipping"
    assert category(_event("aten::sigmoid")) == "other element-wise and overhead"


def test_breakdown_sums_self_time_per_step_by_category():
    gates = _event("fused_gru::gates", None, 3e6)
    events = [
        gates,
        _event("aten::mm", _event("fused_gru::step_gemm"), 1e6),
        _event("aten::mm", None, 2e6),
    ]
    got = breakdown(events, steps=2)
    assert got == {
        "GRU gate arithmetic": 1.5,
        "other GEMMs": 1.0,
        "GRU recurrent GEMMs (per step)": 0.5,
    }
    assert list(got) == sorted(got, key=lambda k: -got[k])


def test_verbose_rows_count_calls_and_time_per_implementation():
    amx = (
        "onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx10_1_512_amx,undef,"
        "src:bf16::blocked:ab::f0 wei:bf16::blocked:ba::f0 dst:bf16::blocked:ab::f0,"
        "attr-scratchpad:user,,24x512:512x1536,{ms}"
    )
    lines = [
        "onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with AMX",
        amx.format(ms=0.5),
        amx.format(ms=1.5),
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward_training,"
        "src:f32::blocked:abcd::f0 wei:f32::blocked:abcd::f0 bia:undef::undef::: "
        "dst:f32::blocked:abcd::f0,,alg:convolution_direct,mb1_ic1oc1,3.0",
    ]
    rows = _verbose_rows(lines)
    assert rows == [
        {
            "primitive": "convolution",
            "implementation": "jit:avx2",
            "dtypes": "f32",
            "calls": 1,
            "ms": 3.0,
        },
        {
            "primitive": "matmul",
            "implementation": "brg_matmul:avx10_1_512_amx",
            "dtypes": "bf16",
            "calls": 2,
            "ms": 2.0,
        },
    ]


def _run(argv, monkeypatch, capsys) -> dict:
    if "speechswarm.benchmark.cli" not in cli.COMMAND_MODULES:  # until the lead registers it
        monkeypatch.setattr(
            cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "speechswarm.benchmark.cli")
        )
    code = cli.main(argv)
    out, _ = capsys.readouterr()
    assert code == 0
    return json.loads(out)


@pytest.mark.slow
def test_profile_command_breaks_a_step_down(monkeypatch, capsys):
    r = _run(["bench", "profile", "--config", "tiny", "--json", *OVERRIDES], monkeypatch, capsys)
    cpu = r["cpu_s_per_step"]
    assert r["utterances"] >= 1 and 0 < r["audio_s"] <= 20
    assert sum(cpu.values()) > 0 and "GRU gate arithmetic" in cpu
    assert r["aten_gemm_calls"] > 0
    assert all(row["calls"] > 0 for row in r["onednn"])


@pytest.mark.slow
def test_compare_command_times_each_variant_each_round(monkeypatch, capsys):
    argv = ["bench", "profile", "--config", "tiny", "--compare", "packed,aten", "--rounds", "2"]
    r = _run([*argv, "--lengths", "1", "0.5", "--json", *OVERRIDES], monkeypatch, capsys)
    rows = r["compare"]
    assert [c["variant"] for c in rows] == [
        "packed x1 lengths",
        "aten x1 lengths",
        "packed x0.5 lengths",
        "aten x0.5 lengths",
    ]
    assert all(len(c["seconds"]) == 2 and c["best_s"] <= c["median_s"] for c in rows)
    assert rows[0]["audio_s"] == rows[1]["audio_s"]  # one batch per length scale
