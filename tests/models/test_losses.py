import math

import pytest
import torch
import torch.multiprocessing as mp

from models.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, SoftmaxCentering, sinkhorn_knopp


def _ce(teacher_row, student_row, temp):
    """Cross-entropy of one target row against one student row, written out."""
    z = [v / temp for v in student_row.tolist()]
    m = max(z)
    log_norm = m + math.log(sum(math.exp(v - m) for v in z))
    return -sum(t * (v - log_norm) for t, v in zip(teacher_row.tolist(), z))


def _dino_reference(s_global, teacher, s_local, n_global, temp=0.1):
    batch = teacher.shape[0] // n_global
    pair_means = []
    crops = [("g", i, s_global[i * batch : (i + 1) * batch]) for i in range(n_global)]
    if s_local is not None:
        crops += [("l", i, s_local[i * batch : (i + 1) * batch]) for i in range(s_local.shape[0] // batch)]
    for kind, i, s in crops:
        for j in range(n_global):
            if kind == "g" and i == j:
                continue
            t = teacher[j * batch : (j + 1) * batch]
            pair_means.append(sum(_ce(t[b], s[b], temp) for b in range(batch)) / batch)
    return sum(pair_means) / len(pair_means)


def _sinkhorn_reference(logits, temp, n_iterations):
    """The official algorithm on one process, in float64, with explicit loops over the matrix."""
    q = torch.exp(logits.double() / temp).t().clone()
    n_protos, n_rows = q.shape
    q /= q.sum()
    for _ in range(n_iterations):
        for k in range(n_protos):
            q[k] /= q[k].sum()
        q /= n_protos
        for b in range(n_rows):
            q[:, b] /= q[:, b].sum()
        q /= n_rows
    return (q * n_rows).t()


@pytest.mark.parametrize("n_global,n_local", [(2, 3), (2, 0), (3, 2)])
def test_dino_loss_matches_pairwise_reference(n_global, n_local):
    g = torch.Generator().manual_seed(n_global * 10 + n_local)
    batch, k = 3, 7
    s_global = torch.randn(n_global * batch, k, generator=g)
    s_local = torch.randn(n_local * batch, k, generator=g) if n_local else None
    teacher = torch.softmax(torch.randn(n_global * batch, k, generator=g) / 0.3, dim=-1)
    loss = DINOLoss()(s_global, teacher, s_local, n_global_crops=n_global)
    ref = _dino_reference(s_global, teacher, s_local, n_global)
    assert loss.item() == pytest.approx(ref, rel=1e-5)


def test_dino_loss_equals_official_local_plus_global_terms():
    g = torch.Generator().manual_seed(0)
    batch, k, n_local = 4, 9, 8
    s_global = torch.randn(2 * batch, k, generator=g)
    s_local = torch.randn(n_local * batch, k, generator=g)
    teacher = torch.softmax(torch.randn(2 * batch, k, generator=g), dim=-1)

    def ce_sum(students, teachers):  # sum over pairs of batch-mean CE, the official inner loop
        total = 0.0
        for s in students:
            lsm = torch.log_softmax(s / 0.1, dim=-1)
            for t in teachers:
                total -= (t * lsm).sum(-1).mean()
        return total

    t_chunks = teacher.chunk(2)
    swapped = torch.cat([t_chunks[1], t_chunks[0]])
    local_term = ce_sum(s_local.chunk(n_local), t_chunks) / 18
    global_term = ce_sum([s_global], [swapped]) * 2 / 18
    loss = DINOLoss()(s_global, teacher, s_local)
    torch.testing.assert_close(loss, local_term + global_term)


def test_uniform_outputs_give_exactly_ln_k():
    batch, k = 4, 1000
    teacher = torch.full((2 * batch, k), 1.0 / k)
    loss = DINOLoss()(torch.zeros(2 * batch, k), teacher, torch.zeros(8 * batch, k))
    assert loss.item() == pytest.approx(math.log(k), abs=1e-5)
    # Constant teacher logits through either centering are uniform targets too.
    constant = torch.zeros(2 * batch, k)
    for targets in (sinkhorn_knopp(constant, 0.04), SoftmaxCentering(k)(constant, 0.04)):
        torch.testing.assert_close(targets, teacher)
    masks = torch.zeros(4, 6, dtype=torch.bool)
    masks[0, :3] = True
    masks[2, 1:] = True
    weights = (1.0 / masks.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(masks)[masks]
    n = int(masks.sum())
    ibot = IBOTPatchLoss()(torch.zeros(n, k), torch.full((n, k), 1.0 / k), weights, n_images=4)
    assert ibot.item() == pytest.approx(math.log(k) * 2 / 4, abs=1e-5)  # 2 of 4 images masked


def test_dino_loss_is_safe_under_bf16_autocast():
    g = torch.Generator().manual_seed(1)
    s_global = (torch.randn(4, 64, generator=g) * 3).bfloat16()
    s_local = (torch.randn(8, 64, generator=g) * 3).bfloat16()
    teacher = sinkhorn_knopp(torch.randn(4, 64, generator=g).bfloat16(), 0.04)
    assert teacher.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = DINOLoss()(s_global, teacher, s_local)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, DINOLoss()(s_global.float(), teacher, s_local.float()))
    weights = torch.full((4,), 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ibot = IBOTPatchLoss()(s_global, teacher, weights, n_images=4)
    assert ibot.dtype == torch.float32
    torch.testing.assert_close(ibot, IBOTPatchLoss()(s_global.float(), teacher, weights, n_images=4))


def test_sinkhorn_matches_reference_and_balances():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 5, generator=g)
    q = sinkhorn_knopp(logits, temp=0.5, n_iterations=3)
    torch.testing.assert_close(q.double(), _sinkhorn_reference(logits, 0.5, 3), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(6))  # each sample's targets sum to 1
    balanced = sinkhorn_knopp(logits, temp=0.5, n_iterations=200)
    torch.testing.assert_close(balanced.sum(dim=0), torch.full((5,), 6 / 5), rtol=1e-4, atol=1e-5)


def test_sinkhorn_does_not_overflow_at_low_temperature():
    logits = torch.tensor([[1.0, -1.0, 0.5], [0.9, 0.2, -0.3]])
    q = sinkhorn_knopp(logits, temp=0.001)  # exp(1000) overflows without the shift
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(2))


def test_softmax_centering_matches_ema_reference():
    g = torch.Generator().manual_seed(3)
    k = 5
    centering = SoftmaxCentering(k, momentum=0.9)
    center = torch.zeros(k)
    for _ in range(3):
        logits = torch.randn(4, k, generator=g)
        probs = centering(logits, temp=0.07)
        expected = torch.stack([torch.softmax((row - center) / 0.07, dim=0) for row in logits])
        torch.testing.assert_close(probs, expected)
        center = 0.9 * center + 0.1 * sum(row for row in logits) / len(logits)
        torch.testing.assert_close(centering.center.squeeze(0), center)
    before = centering.center.clone()
    centering.update(torch.zeros(0, k))
    torch.testing.assert_close(centering.center, before)


def test_ibot_loss_matches_per_image_reference_and_ignores_padding():
    g = torch.Generator().manual_seed(4)
    n_images, n_patches, k = 4, 9, 6
    masks = torch.zeros(n_images, n_patches, dtype=torch.bool)
    masks[0, [1, 4, 5]] = True
    masks[1, [0]] = True
    masks[3, [2, 3, 7, 8]] = True
    s_all = torch.randn(n_images, n_patches, k, generator=g)
    t_all = torch.softmax(torch.randn(n_images, n_patches, k, generator=g), dim=-1)
    per_image = []
    for i in range(n_images):
        idx = masks[i].nonzero().flatten().tolist()
        per_image.append(sum(_ce(t_all[i, p], s_all[i, p], 0.1) for p in idx) / len(idx) if idx else 0.0)
    ref = sum(per_image) / n_images

    flat = masks.flatten().nonzero().flatten()
    weights = (1.0 / masks.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(masks)[masks]
    s = s_all.flatten(0, 1)[flat]
    t = t_all.flatten(0, 1)[flat]
    loss = IBOTPatchLoss()(s, t, weights, n_images=n_images)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    padded = torch.cat([s, torch.randn(5, k, generator=g)])
    padded_t = torch.cat([t, torch.rand(5, k, generator=g)])
    n_real = torch.tensor([len(flat)])
    loss_padded = IBOTPatchLoss()(padded, padded_t, weights, n_images=n_images, n_masked_patches=n_real)
    torch.testing.assert_close(loss_padded, loss)


def _koleo_reference(x, eps=1e-8):
    xs = [row / max(row.norm().item(), eps) for row in x]
    total = 0.0
    for i, a in enumerate(xs):
        best = min((j for j in range(len(xs)) if j != i), key=lambda j: (a - xs[j]).norm().item())
        d = math.sqrt(sum((u - v + eps) ** 2 for u, v in zip(a.tolist(), xs[best].tolist())))
        total -= math.log(d + eps)
    return total / len(xs)


def test_koleo_matches_nearest_neighbour_reference():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 5, generator=g) * 4
    loss = KoLeoLoss()(x)
    assert loss.item() == pytest.approx(_koleo_reference(x), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_bf16 = KoLeoLoss()(x.bfloat16())
    assert loss_bf16.dtype == torch.float32
    assert loss_bf16.item() == pytest.approx(_koleo_reference(x.bfloat16().float()), rel=1e-5)
    # Spread-out features score lower than a near-duplicate cluster.
    clustered = torch.randn(1, 5, generator=g) + 1e-3 * torch.randn(7, 5, generator=g)
    assert KoLeoLoss()(clustered) > loss + 3
    with pytest.raises(ValueError):
        KoLeoLoss()(torch.randn(1, 5))


def test_koleo_gradient_pushes_neighbours_apart():
    x = torch.tensor([[1.0, 0.0], [0.99, 0.14], [-1.0, 0.1]], requires_grad=True)
    KoLeoLoss()(x).backward()
    step = x.detach() - 0.01 * x.grad
    assert KoLeoLoss()(step) < KoLeoLoss()(x.detach())


# --- distributed: 2 gloo processes with half the batch each == 1 process with the full batch ---


def _distributed_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(7)
        logits = torch.randn(8, 6, generator=g)
        patches = torch.randn(7, 6, generator=g)
        rows = logits.chunk(world)[rank]
        # Uneven masked-patch counts per process (5 and 2), as iBOT produces.
        patch_rows = patches[:5] if rank == 0 else patches[5:]
        centering = SoftmaxCentering(6)
        centering.update(rows)
        torch.save(
            {
                "sk": sinkhorn_knopp(rows, 0.1),
                "sk_patches": sinkhorn_knopp(patch_rows, 0.1),
                "center": centering.center.clone(),
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_centering_across_two_processes_equals_one_process(tmp_path):
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(8, 6, generator=g)
    patches = torch.randn(7, 6, generator=g)
    torch.testing.assert_close(torch.cat([p["sk"] for p in parts]), sinkhorn_knopp(logits, 0.1))
    torch.testing.assert_close(torch.cat([p["sk_patches"] for p in parts]), sinkhorn_knopp(patches, 0.1))
    full = SoftmaxCentering(6)
    full.update(logits)
    for p in parts:
        torch.testing.assert_close(p["center"], full.center)


def test_collate_head_and_ibot_loss_fit_together():
    """Masked tokens gathered through the collate's flat indices into a static ``upperbound``
    buffer, run through a head, give the per-image masked-patch loss of the plain reference."""
    from models.collate import MultiCropCollator
    from models.heads import DINOHead

    torch.manual_seed(0)
    samples = [{"global_crops": [torch.zeros(3, 16, 16)] * 2, "local_crops": []} for _ in range(4)]
    batch = MultiCropCollator(patch_size=4)(samples, generator=torch.Generator().manual_seed(0))
    masks, n_masked = batch["collated_masks"], int(batch["n_masked_patches"])
    n_images, n_patches = masks.shape
    dim, k = 6, 11
    student_tokens, teacher_tokens = torch.randn(n_images, n_patches, dim), torch.randn(n_images, n_patches, dim)
    student_head, teacher_head = DINOHead(dim, k, 8, 4), DINOHead(dim, k, 8, 4)

    def gather(tokens):
        buffer = tokens.new_zeros(batch["upperbound"], dim)
        buffer[:n_masked] = tokens.flatten(0, 1).index_select(0, batch["mask_indices_list"])
        return buffer

    student_out = student_head(gather(student_tokens))
    teacher_out = sinkhorn_knopp(teacher_head(gather(teacher_tokens))[:n_masked], 0.05)
    loss = IBOTPatchLoss()(student_out, teacher_out, batch["masks_weight"], n_images, n_masked)

    teacher_all = sinkhorn_knopp(teacher_head(teacher_tokens[masks]), 0.05)
    student_all = student_head(student_tokens[masks])
    row, ref = 0, 0.0
    for i in range(n_images):
        count = int(masks[i].sum())
        if count:
            ref += sum(_ce(teacher_all[row + p], student_all[row + p], 0.1) for p in range(count)) / count
        row += count
    assert n_masked > 0 and loss.item() == pytest.approx(ref / n_images, rel=1e-5)
