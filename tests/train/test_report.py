import io

import numpy as np

from PIL import Image

from tasks.train.report import knn_curve, knn_markdown, line_chart_png

SUMMARY = {"knn": {"0": {"knn_top1_k10": 0.1, "knn_top1_k20": 0.12, "feature_effective_rank": 3.0},
                   "50": {"knn_top1_k10": 0.5, "knn_top1_k20": 0.55, "feature_effective_rank": 9.5}}}


def test_markdown_table_and_curve():
    md = knn_markdown(SUMMARY)
    lines = md.splitlines()
    assert lines[0] == "| step | top-1 k=10 | top-1 k=20 | eff. rank |"
    assert lines[3] == "| 50 | 50.0% | 55.0% | 9.5 |"
    assert knn_curve(SUMMARY, 20) == [(0, 0.12), (50, 0.55)]
    assert knn_markdown({}) .startswith("_no")


def test_line_chart_is_a_small_png_with_a_line():
    png = line_chart_png([(0, 10.0), (50, 55.0), (100, 60.0)], title="knn")
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (360, 200) and len(png) < 20_000
    blue = int((np.asarray(img) == np.array([31, 119, 180], dtype=np.uint8)).all(axis=-1).sum())
    assert blue > 100
