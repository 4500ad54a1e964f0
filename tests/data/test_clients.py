"""The custom-dataset hook: loading user functions and turning their clients into manifests."""

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechswarm.data.clients import HookError, clients_from_hook, load_hook
from speechswarm.data.tokenizer import CharTokenizer

SR = 16000

HOOK_SOURCE = textwrap.dedent(
    """
    import numpy as np
    from hook_helpers import N_CLIENTS  # a module beside this file

    def load_clients_data(num_clients=N_CLIENTS):
        rng = np.random.default_rng(0)
        data = {"train": [], "val": [], "test": [], "dataset_name": ["toy"] * num_clients}
        for c in range(num_clients):
            xs = [0.5 * rng.uniform(-1, 1, 800 + 160 * i).astype(np.float32) for i in range(2)]
            data["train"].append((xs, ["Hello 2", "world"]))
            data["val"].append(([], []))
            data["test"].append(([xs[0]], ["test me"]))
        return data

    NOT_A_FUNCTION = 3
    """
)


@pytest.fixture
def hook_file(tmp_path, monkeypatch) -> Path:
    # load_hook appends the hook's folder to sys.path and registers modules: undo both.
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    (tmp_path / "hook_helpers.py").write_text("N_CLIENTS = 2\n")
    path = tmp_path / "my_hook.py"
    path.write_text(HOOK_SOURCE)
    return path


def test_load_hook_from_file_and_module(hook_file, monkeypatch):
    func = load_hook(f"{hook_file}:load_clients_data")
    assert len(func()["train"]) == 2  # sibling import worked
    monkeypatch.syspath_prepend(str(hook_file.parent))
    func = load_hook("my_hook:load_clients_data")
    assert len(func(num_clients=3)["test"]) == 3


def test_load_hook_errors_say_what_is_missing(hook_file, tmp_path):
    with pytest.raises(ValueError, match="expected 'module:function'"):
        load_hook("no_colon_here")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hook(f"{tmp_path / 'absent.py'}:f")
    with pytest.raises(HookError, match="cannot import module 'surely_not_a_module_x'"):
        load_hook("surely_not_a_module_x:f")
    with pytest.raises(HookError, match=r"no attribute 'load_data'.*'load_clients_data'"):
        load_hook(f"{hook_file}:load_data")
    with pytest.raises(HookError, match="NOT_A_FUNCTION is a int"):
        load_hook(f"{hook_file}:NOT_A_FUNCTION")


def test_clients_from_hook_writes_audio_and_keeps_clients(hook_file, tmp_path):
    result = load_hook(f"{hook_file}:load_clients_data")()
    splits = clients_from_hook(result, tmp_path / "out", sample_rate=SR)
    assert sorted(splits) == ["test", "train", "val"]
    assert splits["val"] == []
    train = splits["train"]
    assert [u.id for u in train] == [
        "toy-train-c0000-000000",
        "toy-train-c0000-000001",
        "toy-train-c0001-000000",
        "toy-train-c0001-000001",
    ]
    u = train[3]
    assert u.extra == {"client": 1, "dataset": "toy", "split": "train"}  # "world" unchanged
    assert u.speaker == "client1"
    assert train[0].text == "hello two" and train[0].extra["raw_text"] == "Hello 2"
    assert u.duration == pytest.approx((800 + 160) / SR)
    # The FLAC holds the hook's samples (16-bit: within one quantisation step).
    wave, sr = sf.read(u.audio, dtype="float32")
    assert sr == SR
    np.testing.assert_allclose(wave, result["train"][1][0][1], atol=1.0 / 32767)
    assert Path(u.audio) == (tmp_path / "out" / "train" / "client0001" / "000001.flac").resolve()
    assert [x.text for x in splits["test"]] == ["test me", "test me"]


def test_paths_token_ids_and_single_dataset_name(tmp_path):
    audio = tmp_path / "clip.wav"
    sf.write(str(audio), np.zeros(4000, np.float32), SR)
    tok = CharTokenizer()
    result = {
        "train": [([str(audio), audio], [tok.encode("by path"), np.array([2, 25, 0, 0])])],
        "dataset_name": "my data/v2",
    }
    (utts,) = clients_from_hook(result, tmp_path / "out", tokenizer=tok).values()
    assert [(u.audio, u.text, u.duration) for u in utts] == [
        (str(audio), "by path", 0.25),
        (str(audio), "by", 0.25),  # trailing blanks (padding) skipped
    ]
    assert utts[0].id == "my_data_v2-train-c0000-000000"


@pytest.mark.parametrize(
    "result, message",
    [
        ([1, 2], "hook result is a list"),
        ({"dataset_name": "x"}, r"has none of \['train', 'val', 'test'\]"),
        (
            {"train": [([], []), ([], [])], "test": [([], [])]},
            r"clients per split differ \{'train': 2, 'test': 1\}",
        ),
        ({"train": [([np.zeros(10)], [])]}, r"split 'train', client 0: 1 audio items \(xs\) but 0"),
        (
            {"train": [([np.zeros((50, 80))], ["x"])]},
            r"client 0, item 0: array of shape \(50, 80\)",
        ),
        ({"train": [([np.full(10, 3.0)], ["x"])]}, "samples reach 3, outside"),
        ({"train": [([np.array([0.1, np.nan])], ["x"])]}, "NaN or infinite"),
        ({"train": [([np.zeros(10)], [[1, 2]])]}, "pass the tokenizer that made them"),
        ({"train": [([np.zeros(10)], ["?!"])]}, "empty after normalisation"),
        ({"train": [(["/no/such/file.flac"], ["x"])]}, "missing_file"),
        ({"train": [([np.zeros(10)], ["x"])], "dataset_name": ["a", "b"]}, "2 entries for 1"),
    ],
)
def test_malformed_results_name_split_client_and_item(tmp_path, result, message):
    with pytest.raises(HookError, match=message):
        clients_from_hook(result, tmp_path / "out")
