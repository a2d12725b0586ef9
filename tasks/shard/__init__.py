"""Shard stage: the curated dataset as shuffled WebDataset shards with provenance and a manifest."""
