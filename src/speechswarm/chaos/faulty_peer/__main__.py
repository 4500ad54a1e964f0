"""`speechswarm peer` with `net_fault_peer.FaultyAverager` in place of `GatedAverager`.

    SPEECHSWARM_NET_FAULT='{"kind": "garbage", "mode": "nan"}' \\
        python -m speechswarm.chaos.faulty_peer peer --config CFG --data M --out DIR ...
"""

from __future__ import annotations

import sys

from speechswarm.chaos.net_fault_peer import FaultyAverager
from speechswarm.p2p.net import averager, cli


def main(argv: list[str] | None = None) -> int:
    averager.GatedAverager = FaultyAverager  # peer.py looks the class up when it starts one
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
