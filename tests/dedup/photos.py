"""Real photos for the dedup tests: the sample images that scikit-image, scikit-learn and opencv-doc ship."""

from __future__ import annotations

import functools

from tasks.dedup.planted import source_photos


@functools.lru_cache(maxsize=1)
def photos() -> tuple:
    """``(name, RGB image)`` pairs, longest side at most 1024."""
    return tuple(source_photos())
