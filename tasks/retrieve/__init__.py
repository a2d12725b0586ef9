"""Retrieval stage: k-means over the pool, query-driven (or balanced) selection of pool images."""
