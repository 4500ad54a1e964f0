"""Topologies: degrees, symmetry, connectivity, seeding, redraws and errors.

.venv/bin/python -m pytest tests/p2p/test_p2p_topology.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from speechswarm.p2p.topology import (
    TopologyError,
    describe,
    grid_shape,
    is_connected,
    make_topology,
    topology_for_round,
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
