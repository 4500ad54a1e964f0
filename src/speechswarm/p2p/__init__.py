"""Peer-to-peer training of speech recognizers: agents with their own data, gossip averaging.

    speechswarm p2p --config p2p-tiny      # see docs/p2p.md

config (the `p2p:` section), topology (graphs), partition (agents' data), mixing (pure
averaging math), sync (one agent's send/check/average), local (agents' local training with
one shared model), simulate (rounds of each algorithm), experiment (the command), report.
"""
