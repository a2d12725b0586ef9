"""Plain image folders as an unlabelled source (every image file below a directory)."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def list_images(root: str | os.PathLike) -> list[str]:
    """Sorted relative paths of the image files under ``root`` (hidden entries skipped)."""
    base = Path(str(root).removeprefix("file://"))
    if not base.is_dir():
        raise FileNotFoundError(f"image folder {base} does not exist")
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append(os.path.relpath(os.path.join(dirpath, name), base))
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {base}")
    return sorted(found)
