"""A torchrun worker script for the fault test: `speechswarm ARGS`, except that on the first
attempt (TORCHELASTIC_RESTART_COUNT=0) rank 1 kills itself with SIGKILL right after its
optimizer step FAULT_KILL_AT_STEP, as a crashed machine or an OOM kill would.

    python -m torch.distributed.run --standalone --nproc-per-node=2 --max-restarts=1 \
        tests/distributed/fault_worker.py train --config tiny ...
"""

import os
import signal
import sys

from speechswarm.cli import main
from speechswarm.train import loop

if os.environ.get("RANK") == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
    kill_at = int(os.environ["FAULT_KILL_AT_STEP"])
    real_limits = loop.RunLimits.__call__

    def limits(self, state):
        if state.step >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_limits(self, state)

    loop.RunLimits.__call__ = limits

sys.exit(main(sys.argv[1:]))
