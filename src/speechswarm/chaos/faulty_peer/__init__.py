"""`python -m speechswarm.chaos.faulty_peer peer ...`: the network fault campaign's misbehaving
peer (`chaos/net_fault_peer.py` says what it does). Its entry point is `__main__.py`, a CLI
module: it runs `speechswarm peer`'s own command line."""
