"""Audio on disk to padded batches: manifests, importers, tokens, sampling, loading."""
