"""Embedding stage: SSL-ViT (or descriptor) features for the deduplicated pool and the query sets."""
