import colorsys
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from models.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropAugmentation,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    grayscale,
    hsv_to_rgb,
    random_resized_crop_box,
    rgb_to_hsv,
    solarize,
    to_tensor,
)

_QUIET = dict(
    hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0, global1_blur_p=0.0, global2_blur_p=0.0, local_blur_p=0.0, solarize_p=0.0
)


def _image(h=9, w=11, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def _pil_tensor(img):
    return torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1) / 255


def test_colour_ops_match_pil_and_colorsys_references():
    img = _image()
    x = to_tensor(img)
    def close(ours, pil_image, atol):
        torch.testing.assert_close(ours, _pil_tensor(pil_image), atol=atol, rtol=0)

    for factor in (0.6, 1.3):
        close(adjust_brightness(x, factor), ImageEnhance.Brightness(img).enhance(factor), 1 / 255 + 1e-6)
        # PIL quantises the grey image (saturation) or rounds the mean grey level (contrast) to
        # 8 bits before blending: up to ~1.2/255 apart.
        close(adjust_saturation(x, factor), ImageEnhance.Color(img).enhance(factor), 1.5 / 255)
        close(adjust_contrast(x, factor), ImageEnhance.Contrast(img).enhance(factor), 1.5 / 255)
    luma = torch.tensor(np.asarray(img.convert("L")), dtype=torch.float32) / 255
    torch.testing.assert_close(grayscale(x)[0], luma, atol=1 / 255, rtol=0)
    torch.testing.assert_close(solarize(x), _pil_tensor(ImageOps.solarize(img, 128)))

    shifted = adjust_hue(x, 0.07)
    hsv = rgb_to_hsv(x)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            r, g, b = x[:, i, j].tolist()
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            assert hsv[:, i, j].tolist() == pytest.approx([h, s, v], abs=1e-5)
            expected = colorsys.hsv_to_rgb((h + 0.07) % 1.0, s, v)
            assert shifted[:, i, j].tolist() == pytest.approx(list(expected), abs=1e-5)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)


def test_gaussian_blur_matches_loop_reference():
    x = torch.rand(3, 6, 7, generator=torch.Generator().manual_seed(1))
    sigma, radius = 1.3, 2
    weights = [math.exp(-0.5 * (d / sigma) ** 2) for d in range(-radius, radius + 1)]
    weights = [w / sum(weights) for w in weights]

    def reflect(i, n):
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    ref = torch.zeros_like(x)
    for c in range(3):
        for i in range(6):
            for j in range(7):
                ref[c, i, j] = sum(
                    weights[a] * weights[b] * x[c, reflect(i + a - radius, 6), reflect(j + b - radius, 7)]
                    for a in range(2 * radius + 1)
                    for b in range(2 * radius + 1)
                )
    torch.testing.assert_close(gaussian_blur(x, sigma, kernel_size=5), ref)
    assert gaussian_blur(x, 1.0, kernel_size=9).shape == x.shape  # radius clamped to the image


def test_random_resized_crop_box_statistics_and_fallback():
    g = torch.Generator().manual_seed(2)
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(200, 150, (0.05, 0.32), generator=g)
        assert 0 <= left <= 200 - w and 0 <= top <= 150 - h
        assert 0.04 <= w * h / (200 * 150) <= 0.33
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    # A very wide strip cannot hold a 3:4-4:3 crop of 90% of its area: centred fallback.
    assert random_resized_crop_box(100, 5, (0.9, 1.0), generator=g) == (46, 0, 7, 5)


def test_identity_settings_give_the_normalised_image():
    img = _image(16, 16, seed=3)
    aug = MultiCropAugmentation(global_crops_size=16, local_crops_size=8, n_local_crops=2,
                                global_crops_scale=(1.0, 1.0), **_QUIET)
    out = aug(img, torch.Generator().manual_seed(0))
    x = _pil_tensor(img)
    expected = torch.stack([(x[c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c] for c in range(3)])
    for crop in out["global_crops"]:
        torch.testing.assert_close(crop, expected)
    flipped = MultiCropAugmentation(global_crops_size=16, local_crops_size=8, n_local_crops=0,
                                    global_crops_scale=(1.0, 1.0), **{**_QUIET, "hflip_p": 1.0})(img)
    torch.testing.assert_close(flipped["global_crops"][0], expected.flip(-1))


def test_multicrop_shapes_determinism_and_small_images():
    img = Image.fromarray(np.random.default_rng(4).integers(0, 256, size=(28, 28), dtype=np.uint8), mode="L")
    aug = MultiCropAugmentation(global_crops_size=56, local_crops_size=28, n_local_crops=4)
    a = aug(img, torch.Generator().manual_seed(7))
    b = aug(img, torch.Generator().manual_seed(7))
    c = aug(img, torch.Generator().manual_seed(8))
    assert [t.shape for t in a["global_crops"]] == [(3, 56, 56)] * 2
    assert [t.shape for t in a["local_crops"]] == [(3, 28, 28)] * 4
    for k in ("global_crops", "local_crops"):
        assert all(torch.equal(x, y) for x, y in zip(a[k], b[k]))
    assert not torch.equal(a["global_crops"][0], c["global_crops"][0])
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in a["global_crops"] + a["local_crops"])


def _frequencies(aug, n=400):
    g = torch.Generator().manual_seed(9)
    counts = {"g1_blur": 0, "g2_blur": 0, "local_blur": 0, "g1_sol": 0, "g2_sol": 0, "jitter": 0, "gray": 0, "flip": 0}
    for _ in range(n):
        p1 = aug.sample_params(64, 64, 32, aug.global_crops_scale, aug.blur_p[0], 0.0, g)
        p2 = aug.sample_params(64, 64, 32, aug.global_crops_scale, aug.blur_p[1], aug.solarize_p, g)
        pl = aug.sample_params(64, 64, 16, aug.local_crops_scale, aug.blur_p[2], 0.0, g)
        counts["g1_blur"] += p1.blur_sigma is not None
        counts["g2_blur"] += p2.blur_sigma is not None
        counts["local_blur"] += pl.blur_sigma is not None
        counts["g1_sol"] += p1.solarize
        counts["g2_sol"] += p2.solarize
        counts["jitter"] += p1.jitter is not None
        counts["gray"] += p1.gray
        counts["flip"] += p1.flip
        if p1.blur_sigma is not None:
            assert 0.1 <= p1.blur_sigma <= 2.0
        if p1.jitter is not None:
            order, (b, c, s, h) = p1.jitter
            assert sorted(order) == [0, 1, 2, 3]
            assert 0.6 <= b <= 1.4 and 0.6 <= c <= 1.4 and 0.8 <= s <= 1.2 and -0.1 <= h <= 0.1
    return {k: v / n for k, v in counts.items()}


def test_probabilities_paper_and_official_blur():
    paper = _frequencies(MultiCropAugmentation())
    assert paper["g1_blur"] == 1.0 and paper["g2_blur"] == pytest.approx(0.1, abs=0.05)
    assert paper["local_blur"] == pytest.approx(0.5, abs=0.08)
    assert paper["g1_sol"] == 0.0 and paper["g2_sol"] == pytest.approx(0.2, abs=0.06)
    assert paper["jitter"] == pytest.approx(0.8, abs=0.06) and paper["gray"] == pytest.approx(0.2, abs=0.06)
    assert paper["flip"] == pytest.approx(0.5, abs=0.08)
    official = _frequencies(MultiCropAugmentation(blur_mode="official"))
    assert official["g1_blur"] == 0.0 and official["g2_blur"] == pytest.approx(0.9, abs=0.05)
    assert official["local_blur"] == pytest.approx(0.5, abs=0.08)
    with pytest.raises(ValueError):
        MultiCropAugmentation(blur_mode="inverted")
