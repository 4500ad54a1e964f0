"""Communication graphs between agents, as boolean adjacency matrices (pure, seeded).

    adj = make_topology("regular", 8, seed=0, degree=3)   # (8, 8) bool
    adj[i, j] is True when agent i receives (pulls) agent j's weights.

Undirected graphs are symmetric; `directed` gives every agent exactly `degree` random
in-neighbours (out-degrees vary). There are never self-loops (an agent's own weights enter
the average through the mixing matrix, not the graph). Random graphs are redrawn until
connected (strongly connected for directed ones): a disconnected graph never reaches
consensus, and training on it is `local` training in disguise.
"""

from __future__ import annotations

import math

import numpy as np


class TopologyError(ValueError):
    """A graph that cannot be built with these settings; the message names the key."""


def complete(n: int) -> np.ndarray:
    adj = np.ones((n, n), dtype=bool)
    np.fill_diagonal(adj, False)
    return adj


def ring(n: int) -> np.ndarray:
    """Each agent talks to its two neighbours i-1 and i+1 (one neighbour when n == 2)."""
    adj = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in ((i - 1) % n, (i + 1) % n):
            if j != i:
                adj[i, j] = True
    return adj


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols == n and rows the largest factor <= sqrt(n)."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


def grid(n: int, wrap: bool = False) -> np.ndarray:
    """2-D lattice of `grid_shape(n)`; `wrap` joins opposite edges (a torus)."""
    rows, cols = grid_shape(n)
    adj = np.zeros((n, n), dtype=bool)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                rr, cc = r + dr, c + dc
                if wrap:
                    rr, cc = rr % rows, cc % cols
                elif not (0 <= rr < rows and 0 <= cc < cols):
                    continue
                j = rr * cols + cc
                if j != i:
                    adj[i, j] = True
    return adj


def regular(n: int, degree: int, rng: np.random.Generator, tries: int = 1000) -> np.ndarray:
    """A random undirected `degree`-regular graph (pairing model, redrawn until simple
    and connected)."""
    if degree >= n or (n * degree) % 2:
        raise TopologyError(
            f"p2p.degree={degree} with {n} agents: a regular graph needs degree < agents and "
            "agents x degree even"
        )
    for _ in range(tries):
        stubs = rng.permutation(np.repeat(np.arange(n), degree))
        pairs = stubs.reshape(-1, 2)
        if np.any(pairs[:, 0] == pairs[:, 1]):
            continue
        adj = np.zeros((n, n), dtype=bool)
        if len({(min(a, b), max(a, b)) for a, b in pairs}) < len(pairs):
            continue  # a repeated edge
        adj[pairs[:, 0], pairs[:, 1]] = True
        adj[pairs[:, 1], pairs[:, 0]] = True
        if is_connected(adj):
            return adj
    raise TopologyError(
        f"no connected {degree}-regular graph on {n} agents found; raise p2p.degree"
    )


def directed(n: int, degree: int, rng: np.random.Generator, tries: int = 1000) -> np.ndarray:
    """Each agent pulls from `degree` distinct random peers; redrawn until strongly connected."""
    if degree >= n:
        raise TopologyError(f"p2p.degree={degree} needs more than {degree} agents (got {n})")
    for _ in range(tries):
        adj = np.zeros((n, n), dtype=bool)
        for i in range(n):
            others = np.array([j for j in range(n) if j != i])
            adj[i, rng.choice(others, size=degree, replace=False)] = True
        if is_connected(adj):
            return adj
    raise TopologyError(f"no strongly connected graph with in-degree {degree} on {n} agents")


def erdos_renyi(n: int, p: float, rng: np.random.Generator, tries: int = 1000) -> np.ndarray:
    """Each undirected edge present with probability `p`; redrawn until connected."""
    for _ in range(tries):
        upper = np.triu(rng.random((n, n)) < p, k=1)
        adj = upper | upper.T
        if is_connected(adj):
            return adj
    raise TopologyError(f"p2p.edge_prob={p} gives no connected graph on {n} agents; raise it")


def clustered(n: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """`clusters` complete groups of near-equal size (agents dealt at random), consecutive
    groups joined by one edge between random members (a ring of clusters)."""
    if not 1 <= clusters <= n:
        raise TopologyError(f"p2p.clusters={clusters} must be between 1 and the agents ({n})")
    groups = np.array_split(rng.permutation(n), clusters)
    adj = np.zeros((n, n), dtype=bool)
    for g in groups:
        adj[np.ix_(g, g)] = True
    np.fill_diagonal(adj, False)
    if clusters > 1:
        for k in range(clusters if clusters > 2 else 1):
            a, b = groups[k], groups[(k + 1) % clusters]
            i, j = int(rng.choice(a)), int(rng.choice(b))
            adj[i, j] = adj[j, i] = True
    return adj


def is_connected(adj: np.ndarray) -> bool:
    """Every agent reaches every other along edges (strong connectivity if directed)."""
    n = len(adj)
    if n <= 1:
        return True
    return _reaches_all(adj) and _reaches_all(adj.T)


def _reaches_all(adj: np.ndarray) -> bool:
    seen, frontier = {0}, [0]
    while frontier:
        i = frontier.pop()
        for j in np.flatnonzero(adj[i]):
            if int(j) not in seen:
                seen.add(int(j))
                frontier.append(int(j))
    return len(seen) == len(adj)


def make_topology(
    kind: str,
    n: int,
    *,
    seed: int = 0,
    degree: int = 3,
    edge_prob: float = 0.3,
    clusters: int = 2,
) -> np.ndarray:
    """The (n, n) bool adjacency of `kind` (see p2p.config.TOPOLOGIES), seeded."""
    if n < 1:
        raise TopologyError(f"a topology needs at least one agent, got {n}")
    rng = np.random.default_rng([seed, 7919])
    if n == 1:
        return np.zeros((1, 1), dtype=bool)
    if kind == "complete":
        return complete(n)
    if kind == "ring":
        return ring(n)
    if kind == "regular":
        return regular(n, degree, rng)
    if kind == "directed":
        return directed(n, degree, rng)
    if kind == "erdos_renyi":
        return erdos_renyi(n, edge_prob, rng)
    if kind == "torus":
        return grid(n, wrap=True)
    if kind == "grid":
        return grid(n)
    if kind == "clustered":
        return clustered(n, clusters, rng)
    raise TopologyError(f"unknown topology {kind!r}")


def topology_for_round(kind: str, n: int, round_index: int, *, redraw_every: int, seed: int, **kw):
    """The graph used in round `round_index` (0-based): random kinds get a fresh draw every
    `redraw_every` rounds (0: the same graph throughout). A pure function of its arguments,
    so a resumed simulation needs no saved graph."""
    epoch = round_index // redraw_every if redraw_every else 0
    return make_topology(kind, n, seed=seed + 1_000_003 * epoch, **kw)


def describe(adj: np.ndarray) -> str:
    """`8 agents, 16 links, in-degree 2-2` for logs and reports."""
    n = len(adj)
    symmetric = bool(np.array_equal(adj, adj.T))
    links = int(adj.sum()) // (2 if symmetric else 1)
    deg = adj.sum(axis=1)
    kind = "undirected" if symmetric else "directed"
    return (
        f"{n} agents, {links} {kind} links, in-degree {int(deg.min())}-{int(deg.max())}"
        if n
        else "empty"
    )
