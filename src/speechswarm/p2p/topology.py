"""Communication graphs between agents, as boolean adjacency matrices (pure, seeded).

    adj = make_topology("regular", 8, seed=0, degree=3)   # (8, 8) bool
    adj[i, j] is True when agent i receives (pulls) agent j's weights.

Row sums are in-degrees (how many agents i pulls from), column sums out-degrees. Undirected
graphs are symmetric; `directed` gives every agent exactly `degree` random in-neighbours
(out-degrees vary). There are never self-loops (an agent's own weights enter the average
through the mixing matrix, not the graph). The older random graphs are redrawn until
connected (strongly connected for directed ones): a disconnected graph never reaches
consensus, and training on it is `local` training in disguise.

The P2P seed's graphs (rosaj/p2p_asr `p2p/graph_manager.py`, built there with networkx) are
rebuilt here in numpy, numbered as the seed numbers its agents, with k = `degree`:
`directed_regular` (its directed `sparse`: in = out = k, Kleitman-Wang/Havel-Hakimi),
`torus_kn` (`torus`: n/k x k, both axes wrap), `cylinder` (`grid`: k x n/k, one axis wraps),
`erdos_renyi_directed` (`erdos_renyi`, directed: p = k/n) and `sparse_clusters` (the same
name: directed k-regular clusters, `cross_fraction` of each cluster linked to every other).
As in the seed they are not forced to be connected; `require_connected=True` redraws the
random ones and rejects the deterministic ones when they are not strongly connected.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from speechswarm.config import TOPOLOGIES
from speechswarm.errors import ConfigError

if TYPE_CHECKING:
    from speechswarm.config import P2PConfig

# The seed's graphs, beside the older ones (config.p2p.TOPOLOGIES lists them all).
SEED_GRAPHS = (
    "directed_regular",
    "torus_kn",
    "cylinder",
    "erdos_renyi_directed",
    "sparse_clusters",
)


class TopologyError(ConfigError):
    """A graph that cannot be built with these settings; the message names the keys and values."""


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


def lattice(rows: int, cols: int, *, wrap_rows: bool, wrap_cols: bool) -> np.ndarray:
    """rows x cols 2-D lattice, agent r * cols + c linked to its 4 neighbours; `wrap_rows`
    joins the first and last row, `wrap_cols` the first and last column. Along a wrapped axis
    of length 2 both directions reach the same agent (one link), of length 1 none."""
    n = rows * cols
    adj = np.zeros((n, n), dtype=bool)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                rr, cc = r + dr, c + dc
                rr = rr % rows if wrap_rows else rr
                cc = cc % cols if wrap_cols else cc
                if not (0 <= rr < rows and 0 <= cc < cols):
                    continue
                j = rr * cols + cc
                if j != i:
                    adj[i, j] = True
    return adj


def grid(n: int, wrap: bool = False) -> np.ndarray:
    """2-D lattice of `grid_shape(n)`; `wrap` joins opposite edges (a torus)."""
    rows, cols = grid_shape(n)
    return lattice(rows, cols, wrap_rows=wrap, wrap_cols=wrap)


def _check_kn(kind: str, n: int, k: int) -> None:
    if k < 1 or n % k:
        raise TopologyError(
            f"p2p.topology={kind} is a k x n/k lattice: p2p.degree={k} must divide the "
            f"{n} agents (e.g. p2p.degree={_divisor_near(n, k)})"
        )


def _divisor_near(n: int, k: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - k), d))


def torus_kn(n: int, k: int) -> np.ndarray:
    """The seed's `torus` (networkx grid_graph([k, n/k], periodic=True)): agent j * k + i at
    (j, i), j < n/k, i < k; both axes wrap. 2 x 4: agent 0 talks to 1, 2 and 6."""
    _check_kn("torus_kn", n, k)
    return lattice(n // k, k, wrap_rows=True, wrap_cols=True)


def cylinder(n: int, k: int) -> np.ndarray:
    """The seed's `grid` (networkx grid_2d_graph(k, n/k, periodic=[False, True])): agent
    i * (n/k) + j at (i, j), i < k, j < n/k; rows of n/k wrap into rings, the k rings are
    stacked without wrapping. 2 x 4: agent 0 talks to 1, 3 and 4."""
    _check_kn("cylinder", n, k)
    return lattice(k, n // k, wrap_rows=False, wrap_cols=True)


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


def kleitman_wang(n: int, k: int) -> np.ndarray:
    """The seed's directed `sparse` graph: every agent pulls from k agents and is pulled from by
    k, built deterministically and link for link as networkx's directed_havel_hakimi_graph(
    [k] * n, [k] * n) builds it (Kleitman and Wang 1973). Each step takes, among the agents
    still to be pulled from, the one with the most pulls left to make (then the most left to be
    pulled from, then the lowest number), and makes the agents with the most pulls left pull
    from it (ties: those still to be pulled from first, then most left, then lowest number).
    5 agents, k=2: agent 0 pulls from 3 and 4."""
    pulls = np.full(n, k)  # (n,) links each agent still pulls along: adj row sums to come
    pulled = np.full(n, k)  # (n,) agents still to pull from each: adj column sums to come
    adj = np.zeros((n, n), dtype=bool)
    while pulled.any():
        target = min(np.flatnonzero(pulled > 0), key=lambda i: (-pulls[i], -pulled[i], i))
        others = [i for i in range(n) if i != target and (pulls[i] or pulled[i])]
        others.sort(key=lambda i: (-pulls[i], pulled[i] == 0, -pulled[i], i))
        sources = np.array(others[: pulled[target]], dtype=int)
        # k < n makes [k] * n digraphical, so there are always enough sources
        adj[sources, target] = True
        pulls[sources] -= 1
        pulled[target] = 0
    return adj


def random_directed_regular(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded random graph with in-degree = out-degree = k: the circulant graph (i pulls from
    i+1 .. i+k) mixed by 10 x links degree-preserving swaps (i->j, u->v become i->v, u->j
    where that adds no self-loop or repeated link), then renumbered at random."""
    src = np.repeat(np.arange(n), k)
    dst = (src + np.tile(np.arange(1, k + 1), n)) % n
    adj = np.zeros((n, n), dtype=bool)
    adj[src, dst] = True
    for e, f in rng.integers(len(src), size=(10 * len(src), 2)):
        i, j, u, v = src[e], dst[e], src[f], dst[f]
        if i in (u, v) or j in (u, v) or adj[i, v] or adj[u, j]:  # self-loop or repeat
            continue
        adj[i, j] = adj[u, v] = False
        adj[i, v] = adj[u, j] = True
        dst[e], dst[f] = v, j
    perm = rng.permutation(n)
    return adj[np.ix_(perm, perm)]


def _check_degree(kind: str, n: int, k: int, what: str = "") -> None:
    if not 1 <= k < n:
        raise TopologyError(
            f"p2p.topology={kind}: p2p.degree={k} must be between 1 and {n - 1} for "
            f"{what or f'{n} agents'}"
        )


def _require_connected(draw, require: bool, tries: int, failure: str) -> np.ndarray:
    """`draw()`, redrawn up to `tries` times until strongly connected when `require`."""
    for _ in range(tries if require else 1):
        adj = draw()
        if not require or is_connected(adj):
            return adj
    raise TopologyError(f"{failure}; or set p2p.require_connected=false")


def directed_regular(
    n: int, k: int, rng: np.random.Generator, *, seeded: bool, require_connected: bool
) -> np.ndarray:
    """In-degree = out-degree = k: `kleitman_wang` (the seed's, the same for every seed) or,
    `seeded`, `random_directed_regular`. The deterministic graph with k=1 and n even is
    n/2 disconnected pairs."""
    _check_degree("directed_regular", n, k)
    if not seeded:
        return _require_connected(
            lambda: kleitman_wang(n, k),
            require_connected,
            1,
            f"p2p.topology=directed_regular with p2p.degree={k} on {n} agents is not strongly "
            "connected; raise p2p.degree or set p2p.graph_seeded=true",
        )
    return _require_connected(
        lambda: random_directed_regular(n, k, rng),
        require_connected,
        100,
        f"p2p.topology=directed_regular: no strongly connected graph with p2p.degree={k} on "
        f"{n} agents in 100 draws; raise p2p.degree",
    )


def erdos_renyi_directed(
    n: int, k: int, rng: np.random.Generator, *, require_connected: bool
) -> np.ndarray:
    """The seed's directed `erdos_renyi`: i pulls from j (i != j) with probability p = k/n,
    each ordered pair on its own (expected degree k (n-1)/n). As in the seed an agent may pull
    from nobody; `require_connected` redraws until strongly connected (100 tries)."""
    _check_degree("erdos_renyi_directed", n, k)

    def draw() -> np.ndarray:
        adj = rng.random((n, n)) < k / n
        np.fill_diagonal(adj, False)
        return adj

    return _require_connected(
        draw,
        require_connected,
        100,
        f"p2p.topology=erdos_renyi_directed: no strongly connected graph with p = "
        f"p2p.degree / agents = {k}/{n} in 100 draws; raise p2p.degree",
    )


def sparse_clusters(
    n: int,
    k: int,
    clusters: int,
    cross_fraction: float,
    rng: np.random.Generator,
    *,
    seeded: bool,
    require_connected: bool,
) -> np.ndarray:
    """The seed's `sparse_clusters` (directed): agents 0..m-1, m..2m-1, ... form `clusters`
    clusters of m = n / clusters, each a directed k-regular graph (`directed_regular`); then
    for every ordered pair of clusters (A, B), floor(cross_fraction x m) agents of A each pull
    from one agent of B. A's agents that pull from the fewest so far go first (lowest number
    on ties), B's least-pulled agents are drawn at random: degrees stay within 1 of each other."""
    if not 0.0 <= cross_fraction <= 1.0:
        raise TopologyError(f"p2p.cross_fraction={cross_fraction} must be in [0, 1]")
    if clusters < 1 or n % clusters:
        raise TopologyError(
            f"p2p.topology=sparse_clusters: p2p.clusters={clusters} must divide the {n} agents "
            "into equal clusters"
        )
    m = n // clusters
    _check_degree(
        "sparse_clusters", m, k, f"clusters of {m} agents ({n} / p2p.clusters={clusters})"
    )
    links = int(cross_fraction * m + 1e-9)  # the seed's int(); 1e-9 keeps 0.3 x 10 at 3
    if require_connected and clusters > 1 and not links:
        raise TopologyError(
            f"p2p.topology=sparse_clusters: p2p.cross_fraction={cross_fraction} of {m}-agent "
            f"clusters links no agents, so the {clusters} clusters are disconnected; raise it to "
            f">= {1 / m:.3g} or set p2p.require_connected=false"
        )

    def draw() -> np.ndarray:
        adj = np.zeros((n, n), dtype=bool)
        groups = [np.arange(c * m, (c + 1) * m) for c in range(clusters)]
        for g in groups:
            inner = random_directed_regular(m, k, rng) if seeded else kleitman_wang(m, k)
            adj[np.ix_(g, g)] = inner
        for a, b in ((a, b) for a in range(clusters) for b in range(clusters) if a != b and links):
            pulls = adj[groups[a]].sum(axis=1)  # (m,) row sums
            pulled = adj[:, groups[b]].sum(axis=0)  # (m,) column sums
            sources = groups[a][np.argsort(pulls, kind="stable")[:links]]
            targets = groups[b][np.lexsort((rng.random(m), pulled))[:links]]
            adj[sources, rng.permutation(targets)] = True
        return adj

    return _require_connected(
        draw,
        require_connected,
        100,
        f"p2p.topology=sparse_clusters: no strongly connected graph with p2p.degree={k}, "
        f"p2p.clusters={clusters}, p2p.cross_fraction={cross_fraction} on {n} agents in 100 "
        "draws; raise p2p.cross_fraction",
    )


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
    cross_fraction: float = 0.33,
    graph_seeded: bool = False,
    require_connected: bool = False,
) -> np.ndarray:
    """The (n, n) bool adjacency of `kind` (see config.p2p.TOPOLOGIES), seeded. `degree` is k
    of the seed's graphs (for `torus_kn` and `cylinder` the lattice's k rows); `graph_seeded`
    and `require_connected` concern the seed's graphs only (`SEED_GRAPHS`)."""
    if kind not in _KINDS:
        raise TopologyError(f"unknown topology {kind!r}; choose from {', '.join(_KINDS)}")
    if n < 1:
        raise TopologyError(f"a topology needs at least one agent, got {n}")
    rng = np.random.default_rng([seed, 7919])
    if n == 1:
        return np.zeros((1, 1), dtype=bool)
    k = degree
    if kind == "complete":
        return complete(n)
    if kind == "ring":
        return ring(n)
    if kind == "regular":
        return regular(n, k, rng)
    if kind == "directed":
        return directed(n, k, rng)
    if kind == "erdos_renyi":
        return erdos_renyi(n, edge_prob, rng)
    if kind == "torus":
        return grid(n, wrap=True)
    if kind == "grid":
        return grid(n)
    if kind == "clustered":
        return clustered(n, clusters, rng)
    if kind == "directed_regular":
        return directed_regular(n, k, rng, seeded=graph_seeded, require_connected=require_connected)
    if kind == "torus_kn":
        return torus_kn(n, k)  # lattices are always connected
    if kind == "cylinder":
        return cylinder(n, k)
    if kind == "erdos_renyi_directed":
        return erdos_renyi_directed(n, k, rng, require_connected=require_connected)
    return sparse_clusters(
        n,
        k,
        clusters,
        cross_fraction,
        rng,
        seeded=graph_seeded,
        require_connected=require_connected,
    )


_KINDS = TOPOLOGIES


def topology_options(p: P2PConfig) -> dict:
    """make_topology's keyword arguments (all but kind, n and seed) from the `p2p:` section."""
    return {
        "degree": p.degree,
        "edge_prob": p.edge_prob,
        "clusters": p.clusters,
        "cross_fraction": p.cross_fraction,
        "graph_seeded": p.graph_seeded,
        "require_connected": p.require_connected,
    }


def topology_for_round(kind: str, n: int, round_index: int, *, redraw_every: int, seed: int, **kw):
    """The graph used in round `round_index` (0-based): random kinds get a fresh draw every
    `redraw_every` rounds (0: the same graph throughout). A pure function of its arguments,
    so a resumed simulation needs no saved graph."""
    epoch = round_index // redraw_every if redraw_every else 0
    return make_topology(kind, n, seed=seed + 1_000_003 * epoch, **kw)


def describe(adj: np.ndarray) -> str:
    """`8 agents, 16 undirected links, in-degree 2-2` for logs and reports; a directed graph
    adds `, out-degree 1-3`."""
    n = len(adj)
    if not n:
        return "empty"
    symmetric = bool(np.array_equal(adj, adj.T))
    links = int(adj.sum()) // (2 if symmetric else 1)
    deg_in, deg_out = adj.sum(axis=1), adj.sum(axis=0)
    text = (
        f"{n} agents, {links} {'undirected' if symmetric else 'directed'} links, "
        f"in-degree {int(deg_in.min())}-{int(deg_in.max())}"
    )
    return text if symmetric else f"{text}, out-degree {int(deg_out.min())}-{int(deg_out.max())}"
