"""The `p2p:` section of a config: how agents are formed, connected and averaged.

    speechswarm p2p --config p2p-ds2 p2p.agents=8 p2p.topology=ring

Values only (frozen dataclass); `speechswarm.config` validates types and keys once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class P2PConfig:
    agents: int = 8
    partition: Literal["speaker", "book", "iid", "dirichlet"] = "speaker"
    topology: str = "ring"
    rounds: int = 10
    seed: int = 0
