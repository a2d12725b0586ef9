"""Dedup stage: exact, perceptual-hash and copy-detection dedup of the crawl pool, plus eval-set decontamination."""
