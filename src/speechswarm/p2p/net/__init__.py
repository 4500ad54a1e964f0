"""Peer-to-peer training over a real network on hivemind: `speechswarm peer` and `speechswarm swarm`
(docs/p2p-network.md)."""
