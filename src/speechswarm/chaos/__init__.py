"""Fault-injection campaigns: inject faults by the dozen, count what was lost.

    speechswarm chaos kill --trials 20 --out runs/chaos      # SIGKILL anywhere, then resume
    speechswarm chaos ddp --trials 10                          # SIGKILL one DDP rank
    speechswarm chaos corpus --manifest data/synth/train.jsonl # a tenth of it broken
    speechswarm chaos disk --trials 10                         # full disk, read-only folder
    speechswarm chaos p2p --trials 10                          # SIGKILL a P2P simulation

- `kill.py`: kill -9 a training run in every phase, resume it, compare the final weights.
- `ddp_kill.py`: kill -9 one rank of a DDP run; torchrun restarts it, or `--resume auto`.
- `corpus.py`: a corpus with a tenth of its entries broken in every way we know of;
  `validate` must name each, `train` must skip and report them.
- `disk.py`: a disk that fills, a folder that turns read-only (root: a small tmpfs each).
- `p2p_kill.py`: kill -9 a `speechswarm p2p` simulation, resume it, compare every agent.
"""

from __future__ import annotations

import importlib

# Names and the module that holds each, imported on first use: `speechswarm chaos` is
# registered with the CLI from chaos/cli.py, and building the CLI must not import torch
# (`transcribe --onnx` runs without it).
_WHERE = {
    "PHASES": "kill",
    "SAVE_DELAY_ENV": "kill",
    "KillCampaign": "kill",
    "KillTrial": "kill",
    "classify_stack": "kill",
    "run_kill_campaign": "kill",
    "corpus_passed": "corpus",
    "run_corpus_campaign": "corpus",
    "disk_passed": "disk",
    "run_disk_campaign": "disk",
    "p2p_kill_passed": "p2p_kill",
    "run_p2p_kill_campaign": "p2p_kill",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'speechswarm.chaos' has no attribute {name!r}")
    return getattr(importlib.import_module(f"speechswarm.chaos.{_WHERE[name]}"), name)
