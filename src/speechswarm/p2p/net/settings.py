"""Network settings of a peer: plain values, importable without torch or hivemind (the CLI
builds its arguments from them)."""

from __future__ import annotations

from dataclasses import dataclass

from speechswarm.errors import UsageError

COMPRESSIONS = ("none", "fp16", "int8")


@dataclass(frozen=True)
class NetSettings:
    """Network knobs, each with the symptom that says when to change it (docs/p2p-network.md).

    Defaults suit loopback and a LAN; over the internet raise the times."""

    group_size: int = 2  # peers per averaging group; 2 = pairwise gossip
    every: int = 0  # local steps between averaging rounds; 0: p2p.local_steps (or epochs)
    # Seconds a leader waits for followers. Symptom to raise it: rounds.jsonl shows many
    # "no group" rounds or group sizes below group_size while all peers are alive.
    matchmaking_s: float = 1.0
    # Seconds one averaging round may take in all, matchmaking included; then the peer gives
    # up and trains on. Symptom to raise it: "timeout" rounds on a slow link with big models.
    timeout_s: float = 15.0
    # Seconds without the next chunk from a group member before it is dropped from the round
    # (a stalled or killed peer). Symptom to raise it: healthy peers get dropped on slow links.
    chunk_timeout_s: float = 5.0
    compression: str = "none"  # none | fp16 | int8 (hivemind Uniform8BitQuantization)
    # Average with graph neighbours (p2p.topology, p2p.degree, p2p.seed over p2p.agents peers,
    # each with its --index) instead of whoever is looking for a group; a round whose planned
    # neighbours do not come within half of timeout_s falls back to whoever is reachable
    # (counted). Symptom for it: to reproduce a simulated topology on the network.
    topology: bool = False
    # Run each round's all-reduce in the background while training goes on; its average is
    # applied, with the local progress made meanwhile kept, at most max_staleness steps after
    # its snapshot (0: --every; the loop waits there). Symptom for it: averaging_seconds in
    # summary.json is a large share of the wall time (slow links, big models).
    background: bool = False
    max_staleness: int = 0
    # with --initial-peers: start from a live peer's weights, optimizer state and step
    # (its LR schedule position and round), all checked before use (state_transfer.py)
    load_state: bool = True
    # Before training, wait until this many peers (itself included) have joined the run's
    # DHT, at most wait_s seconds: peers that start together average from the first round.
    wait_peers: int = 0
    wait_s: float = 120.0
    host: str = "127.0.0.1"  # address to listen on (0.0.0.0: all interfaces)
    port: int = 0  # 0: any free port
    announce: str = ""  # public address to announce (behind NAT or a container)

    def check(self) -> None:
        if self.group_size < 2:
            raise UsageError(f"--group-size must be >= 2, got {self.group_size}")
        if self.every < 0:
            raise UsageError(f"--every must be >= 0, got {self.every}")
        if self.max_staleness < 0:
            raise UsageError(f"--max-staleness must be >= 0, got {self.max_staleness}")
        if self.max_staleness and not self.background:
            raise UsageError("--max-staleness applies to --background averaging only")
        if self.compression not in COMPRESSIONS:
            raise UsageError(
                f"--compression / p2p.compression {self.compression!r}: networked peers send "
                "none, fp16 or int8 (int4, int2 and sign are the simulation's FedAvg changes)"
            )
        for key in ("matchmaking_s", "timeout_s", "chunk_timeout_s"):
            if getattr(self, key) <= 0:
                raise UsageError(f"--{key.replace('_', '-')} must be > 0")
        if self.timeout_s <= self.matchmaking_s:
            raise UsageError(
                f"--timeout-s ({self.timeout_s}) must exceed --matchmaking-s "
                f"({self.matchmaking_s}): a round needs time to average after forming a group"
            )


def staleness_bound(max_staleness: int, every: int) -> int:
    """--max-staleness for rounds of `every` steps (0: `every`, one round); a bound beyond a
    round is refused: one background round is in flight at a time."""
    bound = max_staleness or every
    if not 1 <= bound <= every:
        raise UsageError(
            f"--max-staleness {max_staleness} must be within 1..--every ({every}): one "
            "background round is in flight at a time"
        )
    return bound
