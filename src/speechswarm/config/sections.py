"""The sections of a config, one frozen dataclass per concern, and `Config` holding them.

    speechswarm train --config tiny optim.lr=3e-4 train.epochs=20

Values and their defaults only: `speechswarm.config.load` reads YAML and overrides into these
and checks keys and types; comments say what a value means and when to change it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from speechswarm.config.p2p import P2PConfig


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
    validate: bool = True  # decode audio before training too (ids, durations, text: always)


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
    # VTLP: each utterance's frequency axis warped by a factor uniform in this range (e.g.
    # [0.9, 1.1]) with probability vtlp_prob: new vocal-tract lengths from the same persons.
    vtlp_alpha: tuple[float, float] | None = None
    vtlp_prob: float = 1.0
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
    activation: Literal["hardtanh", "relu"] = "hardtanh"  # after each conv layer
    head_hidden: int = 0  # > 0: Linear + activation + dropout before the classifier
    out_norm: bool = True  # BatchNorm1d on the classifier's input
    bn_momentum: float = 0.1  # torch's convention (Keras' 0.99 is 0.01)
    output_upsample: int = 1  # output frames per recurrent frame (divides the time stride)


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
    max_oom: int = 5  # consecutive batches out of memory (each skipped) before the run stops
    # Experiment tracking beside metrics.jsonl and TensorBoard: "mlflow" logs the same
    # metrics and the resolved config to MLflow (pip install 'speechswarm[tracking]');
    # tracking_uri "" is a SQLite store in out_dir (mlflow.db), else any MLflow URI.
    tracking: Literal["none", "mlflow"] = "none"
    tracking_uri: str = ""
    init_from: str = ""
    freeze: tuple[str, ...] = ()  # module-name prefixes whose parameters stay fixed
    # Intermediate CTC (Lee and Watanabe 2021): the CTC loss also on the output of these
    # recurrent layers (1 .. rnn_layers - 1), read by the model's own classifier; the loss is
    # (1 - w) * final + w * mean(intermediate) with w = inter_ctc_weight. (): off.
    inter_ctc_layers: tuple[int, ...] = ()
    inter_ctc_weight: float = 0.3
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
