"""Fault-injection campaigns: inject faults by the dozen, count what was lost.

    speechswarm chaos kill --trials 20 --out runs/chaos      # SIGKILL anywhere, then resume
    speechswarm chaos corpus --manifest data/synth/train.jsonl # a tenth of it broken
    speechswarm chaos disk --trials 10                         # full disk, read-only folder
    speechswarm chaos p2p --trials 10                          # SIGKILL a P2P simulation

- `kill.py`: kill -9 a training run in every phase, resume it, compare the final weights.
- `corpus.py`: a corpus with a tenth of its entries broken in every way we know of;
  `validate` must name each, `train` must skip and report them.
- `disk.py`: a disk that fills, a folder that turns read-only (root: a small tmpfs each).
- `p2p_kill.py`: kill -9 a `speechswarm p2p` simulation, resume it, compare every agent.
"""

from speechswarm.chaos.corpus import corpus_passed, run_corpus_campaign
from speechswarm.chaos.disk import disk_passed, run_disk_campaign
from speechswarm.chaos.kill import (
    PHASES,
    SAVE_DELAY_ENV,
    KillCampaign,
    KillTrial,
    classify_stack,
    run_kill_campaign,
)
from speechswarm.chaos.p2p_kill import p2p_kill_passed, run_p2p_kill_campaign

__all__ = [
    "PHASES",
    "SAVE_DELAY_ENV",
    "KillCampaign",
    "KillTrial",
    "classify_stack",
    "corpus_passed",
    "disk_passed",
    "p2p_kill_passed",
    "run_corpus_campaign",
    "run_disk_campaign",
    "run_kill_campaign",
    "run_p2p_kill_campaign",
]
