import io

import numpy as np
from PIL import Image

from tasks.retrieve.report import cluster_size_histogram_png, contact_sheet_png
from tasks.shard.report import composition_markdown
from tests.support.curation_pool import jpeg


def open_png(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_histogram_draws_bars_proportional_to_counts():
    sizes = np.array([0, 1, 1, 1, 1, 2, 3, 50, 400, 1000])
    img = np.asarray(open_png(cluster_size_histogram_png(sizes, bins=10, width=400, height=200)))
    bar = (img[:, :, 2] > 150) & (img[:, :, 0] < 80)  # the bar colour
    assert bar.any()
    heights = bar.sum(axis=0)
    # The tallest bar is the bin holding the four clusters of size 1.
    assert heights.max() >= 3 * heights[heights > 0].min()
    assert open_png(cluster_size_histogram_png(np.zeros(5, np.int64))).size == (640, 320)


def test_contact_sheet_places_thumbnails_and_survives_broken_images():
    white = jpeg(np.full((40, 40), 255, np.uint8))
    black = jpeg(np.zeros((80, 40), np.uint8))
    sheet = open_png(contact_sheet_png([("a", [white, black]), ("b", [b"broken"])], thumb=32, label_width=50))
    assert sheet.size == (50 + 2 * 36 + 4, 2 * 36 + 4)
    px = np.asarray(sheet)
    assert px[4 + 16, 50 + 4 + 16].min() > 240  # white tile
    assert px[4 + 16, 50 + 40 + 16].max() < 20  # black tile (letterboxed 16x32)
    assert abs(int(px[40 + 16, 50 + 4 + 16][0]) - 160) < 3  # grey placeholder


def test_composition_markdown_lists_sources_and_total():
    md = composition_markdown([
        {"dataset": "imagenet", "rule": "sample", "queries": 10, "candidates": 40, "collisions": 5, "capped": 0, "final": 35},
        {"dataset": "curated", "rule": "as-is", "queries": 5, "candidates": 5, "collisions": 0, "capped": 0, "final": 5},
    ])
    assert "| imagenet | sample | 10 | 40 | 5 | 0 | 35 | 87.5% |" in md
    assert "**40**" in md
