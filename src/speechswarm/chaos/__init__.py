"""Fault-injection campaigns: inject faults by the dozen, count what was lost.

    speechswarm chaos kill --trials 20 --out runs/chaos      # SIGKILL anywhere, then resume

- `kill.py`: kill -9 a training run in every phase, resume it, compare the final weights.
- `corpus.py`: a corpus with a tenth of its entries broken in every way we know of;
  `validate` must name each, `train` must skip and report them.
"""

from speechswarm.chaos.kill import (
    PHASES,
    SAVE_DELAY_ENV,
    KillCampaign,
    KillTrial,
    classify_stack,
    run_kill_campaign,
)

__all__ = [
    "PHASES",
    "SAVE_DELAY_ENV",
    "KillCampaign",
    "KillTrial",
    "classify_stack",
    "run_kill_campaign",
]
