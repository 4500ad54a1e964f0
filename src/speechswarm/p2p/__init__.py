"""Peer-to-peer training of speech recognizers: agents with their own data, gossip averaging."""
