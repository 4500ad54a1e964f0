"""Typed, frozen configuration: YAML files hold values, dotted overrides change them.

    speechswarm train --config tiny optim.lr=3e-4 train.epochs=20

`load_config(preset_or_path, overrides)` reads a preset name (a YAML file shipped in
`speechswarm/configs/`) or a path, applies `a.b=c` overrides (values parsed as YAML), and
builds the frozen dataclasses below. Unknown keys and wrong types fail here, once, with the
dotted key named; nothing downstream re-validates. Builders elsewhere turn these objects into
plain constructor arguments: config objects never enter model or data classes.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from speechswarm.p2p.config import P2PConfig

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the dotted key."""


@dataclass(frozen=True)
class DataConfig:
    train_manifest: str = "data/synth/train.jsonl"
    dev_manifest: str = "data/synth/dev.jsonl"
    test_manifest: str = "data/synth/test.jsonl"
    sample_rate: int = 16000
    # Padded seconds of audio per batch (longest item x batch size): what memory sees.
    max_batch_seconds: float = 160.0
    max_batch_size: int = 64
    max_duration: float = 20.0  # longer utterances are skipped and counted
    num_workers: int = 2
    prefetch_factor: int = 4
    sortagrad: bool = True
    speed_factors: tuple[float, ...] = ()
    shards: str = ""  # folder of TAR shards (speechswarm shard); streams instead of the manifest
    validate: bool = True  # check audio and text before training, skip bad utterances


@dataclass(frozen=True)
class FeatureConfig:
    kind: Literal["spectrogram", "logmel", "mfcc"] = "spectrogram"
    win_ms: float = 20.0
    hop_ms: float = 10.0
    n_mels: int = 80
    n_mfcc: int = 13
    normalize: Literal["utterance", "global", "none"] = "utterance"


@dataclass(frozen=True)
class TokenizerConfig:
    kind: Literal["char", "sentencepiece"] = "char"
    alphabet: str = "abcdefghijklmnopqrstuvwxyz' "
    path: str = ""  # a tokenizer JSON (speechswarm tokenizer train) for sentencepiece


@dataclass(frozen=True)
class AugmentConfig:
    shift_ms: float = 0.0
    gain_db: tuple[float, float] | None = None
    noise_snr_db: tuple[float, float] | None = None
    noise_prob: float = 0.0
    noise_dir: str = ""
    reverb_prob: float = 0.0
    freq_masks: int = 0
    freq_width: int = 27
    time_masks: int = 0
    time_width: float = 0.05


@dataclass(frozen=True)
class ModelConfig:
    conv_channels: tuple[int, ...] = (32, 32)
    conv_kernels: tuple[tuple[int, int], ...] = ((41, 11), (21, 11))
    conv_strides: tuple[tuple[int, int], ...] = ((2, 2), (2, 1))
    rnn_type: Literal["gru", "lstm", "rnn"] = "gru"
    rnn_hidden: int = 256
    rnn_layers: int = 3
    bidirectional: bool = True
    bidirectional_merge: Literal["sum", "concat"] = "sum"
    lookahead: int = 0
    dropout: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "warmup", "cosine", "onecycle", "anneal"] = "onecycle"
    warmup_steps: int = 0
    pct_start: float = 0.3
    anneal_factor: float = 1.1
    min_factor: float = 0.01
    grad_clip: float = 400.0
    accumulate: int = 1


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "runs/default"
    epochs: int = 10
    max_steps: int = 0  # 0: no step limit
    time_budget_min: float = 0.0  # 0: no time limit; stops at the next step past it
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    num_threads: int = 0  # 0: torch's default (all cores)
    # CPU GRU training kernel: "auto" the fused one (speechswarm/fused_gru.py, compiled at
    # first use) where it builds, else ATen's; "fused" fails if it does not build; "aten".
    rnn_kernel: Literal["auto", "fused", "aten"] = "auto"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # steps between dev evaluations; 0: once per epoch
    checkpoint_every: int = 0  # steps between checkpoints; 0: at each evaluation and at the end
    keep_last: int = 3
    # The dev metric that picks best.pt and drives early stopping. WER by default (the
    # standard); CER for young models whose WER sits near or above 100 % (many short
    # insertions) and so cannot tell a better checkpoint from a worse one.
    select_by: Literal["wer", "cer"] = "wer"
    early_stop_patience: int = 0  # evaluations without improvement of select_by; 0: off
    target_wer: float = 0.0  # stop when dev WER <= this (MLPerf rule); 0: off
    max_nonfinite: int = 20  # consecutive non-finite losses or gradients before the run stops
    init_from: str = ""
    freeze: tuple[str, ...] = ()  # module-name prefixes whose parameters stay fixed
    dev_max_utterances: int = 0  # 0: all dev utterances; N: N spread evenly over the manifest
    # DDP (torchrun / --nproc). Ranks normalise with their own batch's statistics unless
    # sync_batchnorm: set it when per-rank batches are small (a few utterances per GPU) and
    # training is worse than on one device with the same global batch. Costs two small
    # all-reduces per BatchNorm layer and step.
    sync_batchnorm: bool = False
    # Minutes a collective waits for a slow rank before the run fails. Rank 0 evaluates the
    # dev set while the others wait: raise it if a long evaluation ends in a timeout error.
    dist_timeout_min: float = 30.0


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    p2p: P2PConfig = field(default_factory=P2PConfig)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(source: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a Config from a preset name or YAML path (or defaults) plus `a.b=c` overrides."""
    raw: dict = {}
    if source:
        raw = _read_yaml(_resolve_source(source))
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    return from_dict(Config, raw)


def to_dict(cfg: Any) -> Any:
    """Plain JSON/YAML-able data (tuples become lists) for checkpoints and run folders."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from nested dicts, checking keys and types; errors name the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {_show(data)}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in '{path}'" if path else ""
        raise ConfigError(
            f"unknown key(s){where}: {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in (o for o in options if o is not type(None)):
            try:
                return _coerce(opt, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{key}: {_show(value)} fits no type of {tp}"
        )
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(
            _coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    return _coerce_scalar(tp, value, key)


def _coerce_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {_show(value)}")
    raise ConfigError(f"{key}: unsupported type {tp}")  # a bug in this module, not user input


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _resolve_source(source: str) -> Path:
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {source} does not exist")
        return path
    preset = PRESET_DIR / f"{source}.yaml"
    if not preset.is_file():
        raise ConfigError(
            f"'{source}' is neither a YAML file nor a preset; presets: {', '.join(preset_names())}"
        )
    return preset


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}' must look like section.key=value, e.g. optim.lr=3e-4")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    return key, value


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value
