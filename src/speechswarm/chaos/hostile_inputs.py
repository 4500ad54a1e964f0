"""The hostile inputs of `speechswarm chaos hostile` and the commands that meet them.

    speechswarm chaos hostile --out runs/hostile

Each `Case` writes one hostile input into its own `Sandbox` and runs the code a user's
command runs on it: the CLI in this process (`speechswarm.cli.main`, via `RUN_CLI`), now and then the CLI
as a separate process, or the library function a command calls where a CLI run would need
a whole corpus. It returns an `Attempt`: was the input refused, what did the user see, did
a traceback escape. The campaign (`chaos/hostile.py`) judges the rest from the outside:
whether the payload's code ran (its marker file exists) and whether anything appeared
outside the sandbox's target and input folders.

Kinds: checkpoint (pickle payloads that would create the marker file), shard (TAR members
that point outside the archive, links, devices, a lying index), manifest (absolute and `..`
paths, devices, FIFOs, ids and paths with shell syntax), hook (a `load_clients_data()`
hook that raises, exits, returns the wrong thing or cannot be found) and arpa (malformed
language models).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from speechswarm.errors import USER_ERRORS, user_message

SR = 16000


@dataclass(frozen=True)
class Sandbox:
    """One case's folders: it may write in `target` (the command's --out) and reads
    `inputs`; `marker` is the file a payload's code creates if it runs."""

    root: Path

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def target(self) -> Path:
        return self.root / "target"

    @property
    def marker(self) -> Path:
        return self.root / "PAYLOAD_RAN"


@dataclass(frozen=True)
class Attempt:
    """What the user saw. `refused`: the command did not use the input (an error, a
    skipped utterance or sample); `message`: the error or warning text; `as_documented`:
    for an input that is read on purpose, whether it was handled as the docs say."""

    refused: bool
    message: str
    traceback: bool = False
    as_documented: bool = True


@dataclass(frozen=True)
class Case:
    """One hostile input: `run` builds it in a sandbox and runs a command on it."""

    kind: str  # checkpoint, shard, manifest, hook, arpa
    name: str
    via: str  # the code path, e.g. "speechswarm eval"
    run: Callable[[Sandbox], Attempt]
    expect: str = "refuse"  # or "read": used as documented (a manifest's absolute path)


# ---------------------------------------------------------------------- running commands


# The CLI's entry point, `speechswarm.cli.main`, through which `cli()` runs commands as a user
# types them. `speechswarm chaos hostile` (chaos/cli.py, the CLI layer) sets it: a campaign sits
# below the CLI and may not import it (tests/test_layers.py).
RUN_CLI: Callable[[list[str]], int] | None = None


def cli(*argv: str) -> Attempt:
    """`speechswarm ARGV` in this process: refused when it exits non-zero; the message is
    the `speechswarm <command>: error:` line and whatever follows it on stderr."""
    if RUN_CLI is None:
        raise RuntimeError("hostile_inputs.RUN_CLI is not set: run `speechswarm chaos hostile`")
    main = RUN_CLI
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(argv))
    except SystemExit as e:  # the process would end with this code and what it printed
        return Attempt(e.code not in (0, None), _error_text(err.getvalue()))
    except Exception as e:  # what run_command lets through prints a traceback
        return Attempt(True, "".join(traceback.format_exception(e)), traceback=True)
    return Attempt(rc != 0, _error_text(err.getvalue()))


def cli_process(*argv: str, cwd: Path | None = None) -> Attempt:
    """`python -m speechswarm ARGV` as a user types it (a fresh process)."""
    proc = subprocess.run(
        [sys.executable, "-m", "speechswarm", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    stderr = proc.stderr
    return Attempt(proc.returncode != 0, _error_text(stderr), "Traceback (most recent" in stderr)


def call(fn: Callable[[], object]) -> Attempt:
    """A library call a command makes: refused when it raises a user error (printed as
    one line by the CLI); any other exception is a traceback."""
    try:
        fn()
    except USER_ERRORS as e:
        return Attempt(True, user_message(e))
    except Exception as e:
        return Attempt(True, "".join(traceback.format_exception(e)), traceback=True)
    return Attempt(False, "")


def _error_text(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    first = next((i for i, line in enumerate(lines) if ": error: " in line), None)
    return "\n".join(lines if first is None else lines[first:])


# ---------------------------------------------------------------------- shared inputs


def tone(path: Path, seconds: float = 0.5) -> Path:
    """A 440 Hz tone as 16-bit WAV at 16 kHz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SR * seconds)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR, subtype="PCM_16")
    return path


def write_manifest_lines(path: Path, records: list) -> Path:
    """A JSONL manifest of `records` (dicts, or raw strings written as they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("".join(line + "\n" for line in lines))
    return path


# A valid bigram ARPA file over the words "a" and "b" (KenLM reads it).
GOOD_ARPA = """\\data\\
ngram 1=5
ngram 2=2

\\1-grams:
-1.0\t<s>\t-0.3
-0.5\t</s>
-1.0\t<unk>
-0.7\ta\t-0.2
-0.7\tb\t-0.2

\\2-grams:
-0.3\t<s> a
-0.3\ta b

\\end\\
"""


def write_arpa_text(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def model_state(seed: int = 0) -> dict:
    """A small random model checkpoint as `speechswarm train` saves one (model, settings,
    features, tokenizer, step): what a payload rides in."""
    import torch

    from speechswarm.data.tokenizer import CharTokenizer
    from speechswarm.features import FeatureExtractor
    from speechswarm.model import DeepSpeech2

    torch.manual_seed(seed)
    extractor = FeatureExtractor()
    tokenizer = CharTokenizer()
    model = DeepSpeech2(
        extractor.num_features,
        len(tokenizer),
        conv_channels=(4, 4),
        conv_kernels=((41, 11), (21, 11)),
        conv_strides=((2, 2), (2, 1)),
        rnn_hidden=32,
        rnn_layers=2,
    ).eval()
    return {
        "model": model.state_dict(),
        "model_settings": model.settings(),
        "features": extractor.feature_settings(),
        "tokenizer": tokenizer.to_dict(),
        "step": 7,
    }


def good_checkpoint(box: Sandbox) -> Path:
    from speechswarm.checkpoint import save_checkpoint

    return save_checkpoint(box.inputs / "good.pt", model_state())


def training_corpus(box: Sandbox) -> tuple[Path, Path]:
    """(train, dev) manifests of two short tones each: enough for `train` to get to the
    point where it loads a checkpoint."""
    records = [
        {"id": f"u{i}", "audio": str(tone(box.inputs / f"u{i}.wav", 0.6)), "duration": 0.6,
         "text": "a b", "speaker": f"s{i}"}
        for i in range(2)
    ]  # fmt: skip
    train = write_manifest_lines(box.inputs / "train.jsonl", records)
    dev = write_manifest_lines(box.inputs / "dev.jsonl", records)
    return train, dev


def train_args(box: Sandbox, *extra: str) -> list[str]:
    train, dev = training_corpus(box)
    return [
        "train", "--config", "tiny", f"data.train_manifest={train}",
        f"data.dev_manifest={dev}", f"data.test_manifest={dev}", "data.num_workers=0",
        f"train.out_dir={box.target / 'run'}", "train.max_steps=1", "train.device=cpu",
        "model.rnn_hidden=16", "model.rnn_layers=1", "train.inter_ctc_layers=[]", "model.conv_channels=[4,4]",
        "train.num_threads=1", "train.tracking=none", *extra,
    ]  # fmt: skip


# ---------------------------------------------------------------------- checkpoints


class Call:
    """Unpickling this calls `fn(*args)`: the `__reduce__` every pickle exploit uses."""

    def __init__(self, fn: Callable, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _touch(box: Sandbox) -> Call:
    return Call(os.system, f"touch '{box.marker}'")


def _exec(box: Sandbox) -> Call:
    return Call(exec, f"open({str(box.marker)!r}, 'w').close()")


def _save(box: Sandbox, name: str, state: object, **kwargs) -> Path:
    import torch

    path = box.inputs / name
    torch.save(state, path, **kwargs)
    return path


def _payloads(box: Sandbox) -> dict[str, Callable[[], Path]]:
    """name -> builder of a checkpoint file whose unpickling would create the marker."""
    import pickle

    def swapped() -> Path:  # a real zip checkpoint whose data.pkl is a Popen call
        import zipfile

        good = _save(box, "swap_src.pt", model_state())
        path = box.inputs / "swapped.pt"
        evil = pickle.dumps(Call(subprocess.Popen, ["touch", str(box.marker)]), protocol=2)
        with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w") as zout:
            for item in zin.infolist():
                data = zin.read(item.filename)
                zout.writestr(item, evil if item.filename.endswith("/data.pkl") else data)
        return path

    def handmade(name: str, body: bytes) -> Callable[[], Path]:
        def build() -> Path:
            path = box.inputs / name
            path.write_bytes(body.replace(b"MARKER", str(box.marker).encode()))
            return path

        return build

    def in_weights() -> Path:
        state = model_state()
        state["model"]["classifier.weight"] = _touch(box)
        return _save(box, "in_weights.pt", state)

    return {
        "zip": lambda: _save(box, "zip.pt", {**model_state(), "x": _touch(box)}),
        "legacy": lambda: _save(
            box,
            "legacy.pt",
            {**model_state(), "x": _touch(box)},
            _use_new_zipfile_serialization=False,
        ),  # fmt: skip
        "raw_exec": handmade("raw.pt", pickle.dumps({"x": _exec(box)}, protocol=2)),
        "swapped": swapped,
        # OrderedDict is allowed; its argument is an os.system call
        "allowed_reduce": handmade(
            "ordered.pt", b"ccollections\nOrderedDict\n(cos\nsystem\n(Vtouch MARKER\ntRtR."
        ),
        "rebuild_tensor": handmade(
            "rebuild.pt",
            b"ctorch._utils\n_rebuild_tensor_v2\n(cos\nsystem\n(Vtouch MARKER\ntRI0\n"
            b"(I1\nt(I1\ntI00\nNtR.",
        ),
        "numpy_object": lambda: _save(
            box, "numpy.pt", {"x": np.array([_touch(box), 1], dtype=object)}
        ),
        "in_weights": in_weights,
    }


def _checkpoint_case(name: str, payload: str, command: str) -> Case:
    def run(box: Sandbox) -> Attempt:
        attempt = _attempt(box)
        # A clear error says why: the file holds code (not "truncated or corrupt").
        clear = "refusing to unpickle" in attempt.message or "payload refused" in attempt.message
        return Attempt(attempt.refused, attempt.message, attempt.traceback, clear)

    def _attempt(box: Sandbox) -> Attempt:
        evil = str(_payloads(box)[payload]())
        wav = str(tone(box.inputs / "a.wav"))
        manifest = write_manifest_lines(
            box.inputs / "test.jsonl",
            [{"id": "a", "audio": wav, "duration": 0.5, "text": "a"}],
        )
        out = box.target
        argv = {
            "eval": ["eval", "--checkpoint", evil, "--manifest", str(manifest)],
            "transcribe": ["transcribe", "--checkpoint", evil, wav],
            "export": ["export", "--checkpoint", evil, "--out", str(out / "m.onnx")],
            "export safetensors": ["export", "--format", "safetensors", "--checkpoint", evil,
                                   "--out", str(out / "m.safetensors")],
            "average": ["average", str(good_checkpoint(box)), evil, "--out", str(out / "a.pt")],
            "tune-lm": ["tune-lm", "--checkpoint", evil, "--manifest", str(manifest), "--lm",
                        str(write_arpa_text(box.inputs / "lm.arpa", GOOD_ARPA))],
        }  # fmt: skip
        if command == "train --init-from":
            return cli(*train_args(box, "--init-from", evil))
        if command == "train --resume":
            return cli(*train_args(box, "--resume", evil))
        if command == "p2p worker payload":
            from speechswarm.p2p.workspace import _loads

            return _internal(lambda: _loads(Path(evil).read_bytes()))
        if command == "python -m speechswarm eval":
            return cli_process(*argv["eval"])
        return cli(*argv[command])

    via = {"p2p worker payload": "p2p worker payload (p2p.workspace._loads)",
           "python -m speechswarm eval": "speechswarm eval (new process)"}  # fmt: skip
    return Case("checkpoint", name, via.get(command, f"speechswarm {command}"), run)


def _internal(fn: Callable[[], object]) -> Attempt:
    """A call between speechswarm's own processes: any exception refuses, and its message
    is what a person reads."""
    try:
        fn()
    except Exception as e:
        return Attempt(True, f"{type(e).__name__}: {e}")
    return Attempt(False, "")


def _not_a_model(name: str, state: dict, command: str) -> Case:
    def run(box: Sandbox) -> Attempt:
        from speechswarm.checkpoint import save_checkpoint

        path = str(save_checkpoint(box.inputs / "plain.pt", state))
        if command == "transcribe":
            return cli("transcribe", "--checkpoint", path, str(tone(box.inputs / "a.wav")))
        return cli("export", "--checkpoint", path, "--out", str(box.target / "m.onnx"))

    return Case("checkpoint", name, f"speechswarm {command}", run)


CHECKPOINT_CASES = [
    _checkpoint_case("os.system in a torch.save zip", "zip", "eval"),
    _checkpoint_case("os.system in a torch.save zip", "zip", "transcribe"),
    _checkpoint_case("os.system in a torch.save zip", "zip", "export"),
    _checkpoint_case("os.system in a torch.save zip", "zip", "export safetensors"),
    _checkpoint_case("os.system in a torch.save zip", "zip", "average"),
    _checkpoint_case("os.system in a torch.save zip", "zip", "tune-lm"),
    _checkpoint_case("os.system in a torch.save zip", "zip", "train --init-from"),
    _checkpoint_case("os.system in a torch.save zip", "zip", "train --resume"),
    _checkpoint_case("os.system in a torch.save zip", "zip", "p2p worker payload"),
    _checkpoint_case("os.system in a torch.save zip", "zip", "python -m speechswarm eval"),
    _checkpoint_case("os.system in the legacy (non-zip) format", "legacy", "eval"),
    _checkpoint_case("exec() in a bare pickle file", "raw_exec", "transcribe"),
    _checkpoint_case("subprocess.Popen as a zip's data.pkl", "swapped", "eval"),
    _checkpoint_case("os.system inside an allowed OrderedDict", "allowed_reduce", "eval"),
    _checkpoint_case("os.system as a tensor's storage", "rebuild_tensor", "transcribe"),
    _checkpoint_case("os.system in a numpy object array", "numpy_object", "eval"),
    _checkpoint_case("os.system among the model weights", "in_weights", "average"),
    _not_a_model("a weights-only dict without a model", {"step": 1}, "transcribe"),
    _not_a_model("model weights that are a list", {"model": [1, 2]}, "export"),
]


# ---------------------------------------------------------------------- client hooks

HOOKS = """
import sys
import numpy as np

WAVE = (0.3 * np.sin(np.arange(8000) / 5)).astype(np.float32)

def raises():
    raise ValueError("the corpus server said no")

def exits():
    sys.exit(3)

def a_list():
    return [WAVE]

def a_number_per_split():
    return {"train": 5}

def features_not_audio():
    return {"train": [([np.zeros((100, 80), np.float32)], ["a"])]}

def a_path_to_no_audio():
    return {"train": [(["inputs/hooks.py"], ["a"])]}

def names_that_climb():
    return {"train": [([WAVE], ["a"])], "dataset_name": "../../ESCAPED"}

NOT_A_FUNCTION = 3
"""


def _hook_case(name: str, spec: str, via: str = "prepare", expect: str = "refuse") -> Case:
    """`spec` is "FILE:function" with FILE in the sandbox's inputs (hooks.py, broken.py,
    loud.py), or a module name."""

    def run(box: Sandbox) -> Attempt:
        box.inputs.mkdir(parents=True, exist_ok=True)
        (box.inputs / "hooks.py").write_text(HOOKS)
        (box.inputs / "broken.py").write_text("def load_clients_data(:\n    pass\n")
        (box.inputs / "loud.py").write_text("raise RuntimeError('cannot reach the server')\n")
        target, _, func = spec.rpartition(":")
        full = f"{box.inputs / target}:{func}" if target.endswith(".py") else spec
        out = str(box.target / "clients")
        with _restored_imports():
            if via == "p2p":
                return cli("p2p", "--config", "p2p-tiny", "--clients", full,
                           f"train.out_dir={box.target / 'p2p'}")  # fmt: skip
            if via == "process":
                return cli_process("prepare", "clients", full, "--out", out)
            attempt = cli("prepare", "clients", full, "--out", out)
        if expect == "read":  # each utterance id made of the safe name, files inside --out
            written = list((box.target / "clients").rglob("*.flac"))
            manifest = (box.target / "clients" / "train.jsonl").read_text()
            safe = '"id": "ESCAPED-train' in manifest and len(written) == 1
            return Attempt(attempt.refused, attempt.message, attempt.traceback, safe)
        return attempt

    return Case("hook", name, f"speechswarm {'prepare clients' if via != 'p2p' else 'p2p --clients'}"
                + (" (new process)" if via == "process" else ""), run, expect)  # fmt: skip


@contextlib.contextmanager
def _restored_imports():
    """Undo what loading a hook file does to this process: its folder on sys.path, its
    module in sys.modules (`data.clients` registers it as speechswarm_hook_<stem>)."""
    path = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = path
        for name in [n for n in sys.modules if n.startswith("speechswarm_hook_")]:
            del sys.modules[name]


HOOK_CASES = [
    _hook_case("the hook raises", "hooks.py:raises"),
    _hook_case("the hook calls sys.exit", "hooks.py:exits"),
    _hook_case("the hook returns a list", "hooks.py:a_list"),
    _hook_case("a split is a number", "hooks.py:a_number_per_split"),
    _hook_case("features instead of audio", "hooks.py:features_not_audio"),
    _hook_case("an audio path to a Python file", "hooks.py:a_path_to_no_audio"),
    _hook_case("a dataset name that climbs out", "hooks.py:names_that_climb", expect="read"),
    _hook_case("a missing module", "no_such_hook_module_x:load_clients_data"),
    _hook_case("a missing function", "hooks.py:load_clients_data"),
    _hook_case("a name that is not a function", "hooks.py:NOT_A_FUNCTION"),
    _hook_case("a syntax error in the hook file", "broken.py:load_clients_data"),
    _hook_case("the hook file raises on import", "loud.py:load_clients_data"),
    _hook_case("the hook raises", "hooks.py:raises", via="p2p"),
    _hook_case("the hook raises", "hooks.py:raises", via="process"),
]
