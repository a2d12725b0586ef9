import torch

from models.collate import MultiCropCollator


def _samples(batch, n_global=2, n_local=3, size=28, local=14):
    out = []
    for b in range(batch):
        out.append(
            {
                "global_crops": [torch.full((3, size, size), 10.0 * b + g) for g in range(n_global)],
                "local_crops": [torch.full((3, local, local), 100.0 + 10.0 * b + l) for l in range(n_local)],
            }
        )
    return out


def test_collate_shapes_and_crop_major_order():
    batch = _samples(4)
    out = MultiCropCollator(patch_size=7)(batch, generator=torch.Generator().manual_seed(0))
    g, l = out["collated_global_crops"], out["collated_local_crops"]
    assert g.shape == (8, 3, 28, 28) and l.shape == (12, 3, 14, 14)
    for crop in range(2):
        for b in range(4):
            assert g[crop * 4 + b, 0, 0, 0].item() == 10.0 * b + crop
    for crop in range(3):
        for b in range(4):
            assert l[crop * 4 + b, 0, 0, 0].item() == 100.0 + 10.0 * b + crop
    masks = out["collated_masks"]
    assert masks.shape == (8, 16) and masks.dtype == torch.bool


def test_mask_indices_weights_and_upperbound_match_plain_reference():
    out = MultiCropCollator(patch_size=4)(_samples(8, size=32, local=16), generator=torch.Generator().manual_seed(1))
    masks = out["collated_masks"]
    n_images, n_patches = masks.shape
    indices, weights = [], []
    for i in range(n_images):
        count = int(masks[i].sum())
        for p in range(n_patches):
            if masks[i, p]:
                indices.append(i * n_patches + p)
                weights.append(1.0 / count)
    assert out["mask_indices_list"].tolist() == indices
    torch.testing.assert_close(out["masks_weight"], torch.tensor(weights))
    assert out["n_masked_patches"].tolist() == [len(indices)]
    assert out["n_masked_patches"].dtype == torch.long
    assert 0 < len(indices) <= out["upperbound"]
    # The weights of each masked image sum to 1: a per-image mean.
    per_image = torch.zeros(n_images).index_add_(0, out["mask_indices_list"] // n_patches, out["masks_weight"])
    assert torch.allclose(per_image[masks.any(1)], torch.ones(int(masks.any(1).sum())))
    # upperbound depends on the batch size only, so buffers sized by it are static.
    other = MultiCropCollator(patch_size=4)(_samples(8, size=32, local=16), generator=torch.Generator().manual_seed(2))
    assert other["upperbound"] == out["upperbound"]


def test_collate_is_deterministic_accepts_pairs_and_casts():
    samples = _samples(3, n_local=0)
    collate = MultiCropCollator(patch_size=7, dtype=torch.bfloat16)
    a = collate([(s, 0) for s in samples], generator=torch.Generator().manual_seed(5))
    b = collate(samples, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a["collated_masks"], b["collated_masks"])
    assert a["collated_global_crops"].dtype == torch.bfloat16
    assert a["collated_local_crops"].shape == (0, 3, 28, 28)
    assert int((a["collated_masks"].sum(1) > 0).sum()) <= 3  # int(6 * 0.5) images masked at most
