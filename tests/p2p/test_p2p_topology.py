"""Topologies: degrees, symmetry, connectivity, seeding, redraws and errors; the P2P seed's
graphs against hand-checked cases and networkx (which built them in the seed).

.venv/bin/python -m pytest tests/p2p/test_p2p_topology.py -q
"""

from __future__ import annotations

from typing import get_args, get_type_hints

import numpy as np
import pytest

from speechswarm.config import TOPOLOGIES, ConfigError, P2PConfig, check_p2p
from speechswarm.p2p.topology import (
    SEED_GRAPHS,
    TopologyError,
    describe,
    grid_shape,
    is_connected,
    make_topology,
    topology_for_round,
    topology_options,
)


def degrees(adj):
    return sorted(adj.sum(axis=1).tolist())


def test_complete_and_ring_by_hand():
    ring = make_topology("ring", 5)
    expected = np.zeros((5, 5), dtype=bool)
    for i in range(5):
        expected[i, (i + 1) % 5] = expected[i, (i - 1) % 5] = True
    np.testing.assert_array_equal(ring, expected)
    full = make_topology("complete", 4)
    assert full.sum() == 12 and not full.diagonal().any()
    assert make_topology("ring", 2).sum() == 2  # a single link
    assert make_topology("ring", 1).sum() == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regular_is_symmetric_connected_and_regular(seed):
    adj = make_topology("regular", 10, seed=seed, degree=3)
    assert np.array_equal(adj, adj.T) and not adj.diagonal().any()
    assert degrees(adj) == [3] * 10
    assert is_connected(adj)


def test_directed_has_in_degree_d_and_is_strongly_connected():
    adj = make_topology("directed", 9, seed=4, degree=2)
    assert degrees(adj) == [2] * 9  # rows: who each agent pulls from
    assert not np.array_equal(adj, adj.T)
    assert is_connected(adj)


def test_erdos_renyi_connected_and_seeded():
    a = make_topology("erdos_renyi", 12, seed=3, edge_prob=0.3)
    b = make_topology("erdos_renyi", 12, seed=3, edge_prob=0.3)
    c = make_topology("erdos_renyi", 12, seed=4, edge_prob=0.3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(a, a.T) and is_connected(a)


def test_torus_and_grid_degrees():
    assert grid_shape(12) == (3, 4)
    assert degrees(make_topology("torus", 16)) == [4] * 16
    g = make_topology("grid", 6)  # 2 x 3: corners have 2 neighbours, middles 3
    assert degrees(g) == [2, 2, 2, 2, 3, 3]


def test_clustered_groups_joined_in_a_ring():
    adj = make_topology("clustered", 9, seed=0, clusters=3)
    assert is_connected(adj)
    # 3 complete triangles (3 links each) + 3 bridges
    assert adj.sum() // 2 == 3 * 3 + 3


def test_disconnected_graph_detected():
    adj = np.zeros((4, 4), dtype=bool)
    adj[0, 1] = adj[1, 0] = adj[2, 3] = adj[3, 2] = True
    assert not is_connected(adj)


def test_redraw_every_k_rounds():
    kw = dict(redraw_every=2, seed=0, degree=3)
    r0 = topology_for_round("regular", 10, 0, **kw)
    assert np.array_equal(r0, topology_for_round("regular", 10, 1, **kw))
    assert not np.array_equal(r0, topology_for_round("regular", 10, 2, **kw))
    never = dict(kw, redraw_every=0)
    assert np.array_equal(r0, topology_for_round("regular", 10, 7, **never))


def test_impossible_settings_name_the_key():
    with pytest.raises(TopologyError, match="p2p.degree"):
        make_topology("regular", 5, degree=3)  # 5 x 3 is odd
    with pytest.raises(TopologyError, match="p2p.degree"):
        make_topology("directed", 3, degree=3)


def test_describe():
    assert describe(make_topology("ring", 4)) == "4 agents, 4 undirected links, in-degree 2-2"


# ------------------------------------------------------------- the P2P seed's graphs


def in_out(adj):
    """(row sums, column sums): how many each agent pulls from, how many pull from it."""
    return sorted(adj.sum(axis=1).tolist()), sorted(adj.sum(axis=0).tolist())


def pulls(adj):
    return {i: np.flatnonzero(adj[i]).tolist() for i in range(len(adj))}


def test_topology_names_match_the_config():
    hints = get_type_hints(P2PConfig)
    assert get_args(hints["topology"]) == TOPOLOGIES
    assert set(SEED_GRAPHS) <= set(TOPOLOGIES)
    for kind in TOPOLOGIES:  # every configurable name builds
        make_topology(kind, 8, degree=2, clusters=2, cross_fraction=0.5)


def test_directed_regular_two_on_five_by_hand():
    # checked on paper against Kleitman-Wang: each step serves the agent with the most
    # pulls left and lowest number, from the agents with the most pulls left
    adj = make_topology("directed_regular", 5, degree=2)
    assert pulls(adj) == {0: [3, 4], 1: [0, 4], 2: [0, 1], 3: [1, 2], 4: [2, 3]}
    assert in_out(adj) == ([2] * 5, [2] * 5)


@pytest.mark.parametrize("n, k", [(5, 2), (8, 3), (9, 4), (12, 11), (20, 3)])
@pytest.mark.parametrize("seeded", [False, True])
def test_directed_regular_in_and_out_degree_k(n, k, seeded):
    adj = make_topology("directed_regular", n, degree=k, seed=1, graph_seeded=seeded)
    assert in_out(adj) == ([k] * n, [k] * n)
    assert not adj.diagonal().any()
    if 1 < k < n - 1 and not seeded:  # a random draw may come out symmetric
        assert not np.array_equal(adj, adj.T)


def test_directed_regular_deterministic_unless_seeded():
    kw = dict(degree=3)
    a = make_topology("directed_regular", 10, seed=0, **kw)
    assert np.array_equal(a, make_topology("directed_regular", 10, seed=5, **kw))
    r0 = make_topology("directed_regular", 10, seed=0, graph_seeded=True, **kw)
    assert not np.array_equal(r0, r0.T) and not np.array_equal(r0, a)
    assert np.array_equal(
        r0, make_topology("directed_regular", 10, seed=0, graph_seeded=True, **kw)
    )
    assert not np.array_equal(
        r0, make_topology("directed_regular", 10, seed=1, graph_seeded=True, **kw)
    )


def test_directed_regular_matches_networkx_havel_hakimi():
    nx = pytest.importorskip("networkx")
    for n in range(2, 16):
        for k in range(1, n):
            g = nx.directed_havel_hakimi_graph([k] * n, [k] * n)
            seed_adj = nx.to_numpy_array(g, nodelist=range(n)).astype(bool)
            np.testing.assert_array_equal(make_topology("directed_regular", n, degree=k), seed_adj)


def test_torus_and_cylinder_two_by_four_by_hand():
    # seed torus: agent j*2 + i at (j < 4, i < 2), both axes wrap (the 2-axis: one link)
    torus = make_topology("torus_kn", 8, degree=2)
    assert pulls(torus)[0] == [1, 2, 6] and pulls(torus)[5] == [3, 4, 7]
    # seed grid: agent i*4 + j at (i < 2, j < 4), rows of 4 wrap into rings, no wrap across
    cyl = make_topology("cylinder", 8, degree=2)
    assert pulls(cyl)[0] == [1, 3, 4] and pulls(cyl)[6] == [2, 5, 7]
    for adj in (torus, cyl):
        assert np.array_equal(adj, adj.T) and degrees(adj) == [3] * 8


def test_torus_and_cylinder_degrees():
    assert degrees(make_topology("torus_kn", 12, degree=3)) == [4] * 12
    cyl = make_topology("cylinder", 12, degree=3)  # 3 rings of 4: the outer ones lack a side
    assert cyl.sum(axis=1).tolist() == [3] * 4 + [4] * 4 + [3] * 4
    assert np.array_equal(make_topology("cylinder", 5, degree=1), make_topology("ring", 5))
    assert np.array_equal(
        make_topology("torus_kn", 12, degree=3, seed=9), make_topology("torus_kn", 12, degree=3)
    )


def test_torus_and_cylinder_match_networkx():
    nx = pytest.importorskip("networkx")
    for n, k in [(8, 2), (12, 3), (12, 4), (15, 5), (6, 1)]:
        torus = nx.to_numpy_array(nx.grid_graph([k, n // k], periodic=True)).astype(bool)
        cyl = nx.to_numpy_array(nx.grid_2d_graph(k, n // k, periodic=[False, True])).astype(bool)
        for seed_adj in (torus, cyl):
            np.fill_diagonal(seed_adj, False)  # a wrapped axis of length 1: self-loops
        np.testing.assert_array_equal(make_topology("torus_kn", n, degree=k), torus)
        np.testing.assert_array_equal(make_topology("cylinder", n, degree=k), cyl)


def test_erdos_renyi_directed_is_seeded_and_not_forced_connected():
    a = make_topology("erdos_renyi_directed", 40, degree=4, seed=3)
    assert np.array_equal(a, make_topology("erdos_renyi_directed", 40, degree=4, seed=3))
    assert not np.array_equal(a, make_topology("erdos_renyi_directed", 40, degree=4, seed=4))
    assert not np.array_equal(a, a.T) and not a.diagonal().any()
    assert 2.5 < a.sum(axis=1).mean() < 5.5  # expected 4 x 39/40
    # p = 1/12: sparse enough that some draws leave an agent alone; none is redrawn
    draws = [make_topology("erdos_renyi_directed", 12, degree=1, seed=s) for s in range(20)]
    assert not all(is_connected(d) for d in draws)
    forced = make_topology("erdos_renyi_directed", 12, degree=2, seed=0, require_connected=True)
    assert is_connected(forced)


@pytest.mark.parametrize("fraction, extra", [(0.0, 0), (0.25, 1), (0.5, 2), (1.0, 4)])
def test_sparse_clusters_degrees_and_links(fraction, extra):
    # 4 clusters of 4 agents, each directed 2-regular; `extra` links per ordered cluster pair
    adj = make_topology("sparse_clusters", 16, degree=2, clusters=4, cross_fraction=fraction)
    assert adj.sum() == 4 * 4 * 2 + 4 * 3 * extra
    for g in range(4):
        block = adj[4 * g : 4 * g + 4, 4 * g : 4 * g + 4]
        np.testing.assert_array_equal(block, make_topology("directed_regular", 4, degree=2))
    rows, cols = in_out(adj)
    assert rows[-1] - rows[0] <= 1 and cols[-1] - cols[0] <= 1
    assert is_connected(adj) == (extra > 0)
    if fraction == 1.0:  # every agent pulls from one agent of each other cluster
        assert in_out(adj) == ([2 + 3] * 16, [2 + 3] * 16)


def test_sparse_clusters_seeding():
    kw = dict(degree=2, clusters=3, cross_fraction=0.5)
    a = make_topology("sparse_clusters", 12, seed=0, **kw)
    assert np.array_equal(a, make_topology("sparse_clusters", 12, seed=0, **kw))
    assert not np.array_equal(a, make_topology("sparse_clusters", 12, seed=1, **kw))
    b = make_topology("sparse_clusters", 12, seed=0, graph_seeded=True, **kw)
    assert in_out(b)[0][0] >= 2 and not np.array_equal(a, b)


@pytest.mark.parametrize(
    "kind, n, kw, message",
    [
        (
            "directed_regular",
            5,
            dict(degree=5),
            "p2p.degree=5 must be between 1 and 4 for 5 agents",
        ),
        ("erdos_renyi_directed", 4, dict(degree=4), "p2p.degree=4 must be between 1 and 3"),
        ("regular", 5, dict(degree=3), "p2p.degree=3 with 5 agents"),  # 5 x 3 is odd
        ("torus_kn", 10, dict(degree=3), "p2p.degree=3 must divide the 10 agents"),
        ("cylinder", 9, dict(degree=2), "p2p.degree=2 must divide the 9 agents"),
        (
            "sparse_clusters",
            12,
            dict(cross_fraction=1.5),
            r"p2p.cross_fraction=1.5 must be in \[0, 1\]",
        ),
        ("sparse_clusters", 12, dict(cross_fraction=-0.1), r"p2p.cross_fraction=-0.1"),
        ("sparse_clusters", 10, dict(clusters=3), "p2p.clusters=3 must divide the 10 agents"),
        (
            "sparse_clusters",
            12,
            dict(clusters=4, degree=3),
            "p2p.degree=3 must be between 1 and 2 for clusters of 3 agents",
        ),
        (
            "directed_regular",
            4,
            dict(degree=1, require_connected=True),
            "p2p.degree=1 on 4 agents is not strongly connected",
        ),
        (
            "sparse_clusters",
            12,
            dict(clusters=3, degree=2, cross_fraction=0.2, require_connected=True),
            "p2p.cross_fraction=0.2 of 4-agent clusters links no agents",
        ),
        (
            "erdos_renyi_directed",
            30,
            dict(degree=1, require_connected=True),
            "p = p2p.degree / agents = 1/30 in 100 draws",
        ),
        ("star", 4, {}, "unknown topology 'star'"),
    ],
)
def test_graphs_that_cannot_be_built_say_why_in_one_line(kind, n, kw, message):
    with pytest.raises(TopologyError, match=message) as err:
        make_topology(kind, n, **kw)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ConfigError)  # printed as one line by the CLI


def test_cross_fraction_is_checked_with_the_config():
    with pytest.raises(ConfigError, match="p2p.cross_fraction must be in"):
        check_p2p(P2PConfig(cross_fraction=1.2))
    check_p2p(P2PConfig(topology="sparse_clusters", cross_fraction=0.0))


def test_topology_options_pass_every_graph_setting():
    p = P2PConfig(
        degree=2, clusters=4, cross_fraction=0.5, graph_seeded=True, require_connected=True
    )
    adj = make_topology("sparse_clusters", 16, seed=0, **topology_options(p))
    np.testing.assert_array_equal(
        adj,
        make_topology(
            "sparse_clusters",
            16,
            seed=0,
            degree=2,
            clusters=4,
            cross_fraction=0.5,
            graph_seeded=True,
            require_connected=True,
        ),
    )


def test_describe_directed_adds_out_degree():
    adj = make_topology("erdos_renyi_directed", 6, degree=2, seed=0)
    text = describe(adj)
    assert text.startswith("6 agents, ") and " directed links, in-degree " in text
    assert f"out-degree {adj.sum(axis=0).min()}-{adj.sum(axis=0).max()}" in text
