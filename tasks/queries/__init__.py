"""Curated query sets: their typed settings (config) and their readers (sets). Embed, retrieve and shard all
use them, so they live beside those stages rather than inside one of them. Nothing is re-exported here."""
