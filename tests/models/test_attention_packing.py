"""Attention kernels against a plain softmax reference, and packed crops against per-crop runs."""

import math

import pytest
import torch

from models.attention import Attention, packed_attention, resolve_attn_impl, xformers_available
from models.block import Block
from models.packing import Packing
from models.presets import build_vit


def reference_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v for q, k, v [B, H, N, d]."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return scores.softmax(dim=-1) @ v


def test_packed_attention_equals_per_sequence_reference():
    torch.manual_seed(0)
    packing = Packing(((3, 7), (5, 2), (1, 4)))
    q, k, v = (torch.randn(packing.num_tokens, 4, 8, dtype=torch.float64) for _ in range(3))
    out = packed_attention(q, k, v, packing, impl="sdpa")
    start = 0
    for n in packing.seqlens():
        sl = slice(start, start + n)
        ref = reference_attention(*(t[sl].transpose(0, 1) for t in (q, k, v))).transpose(0, 1)
        torch.testing.assert_close(out[sl], ref)
        start += n
    assert start == packing.num_tokens


def test_attention_module_equals_reference():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, attn_impl="sdpa").double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    b, n, d = x.shape
    q, k, v = attn.qkv(x).view(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
    ref = attn.proj(reference_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
    torch.testing.assert_close(attn(x), ref)


def test_attn_impl_resolution_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_attn_impl("auto", cpu) == "sdpa"
    assert resolve_attn_impl("sdpa", cpu) == "sdpa"
    with pytest.raises(RuntimeError, match="xformers"):
        resolve_attn_impl("xformers", cpu)
    with pytest.raises(ValueError):
        resolve_attn_impl("flash", cpu)
    with pytest.raises(ValueError):
        Attention(32, 4, attn_impl="flash")
    assert isinstance(xformers_available(), bool)


def test_packing_layout_helpers():
    a, b = torch.randn(2, 3, 5), torch.randn(4, 1, 5)
    packing = Packing.of([a, b])
    assert packing.groups == ((2, 3), (4, 1)) and packing.num_tokens == 10
    assert packing.seqlens() == [3, 3, 1, 1, 1, 1]
    packed = packing.pack([a, b])
    ua, ub = packing.unpack(packed)
    assert torch.equal(ua, a) and torch.equal(ub, b)
    per_token = packing.per_sample_to_tokens(torch.arange(6.0))
    assert per_token.tolist() == [0, 0, 0, 1, 1, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        packing.pack([b, a])


def _crops(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 56, 56, generator=g), torch.randn(6, 3, 28, 28, generator=g)


@pytest.mark.parametrize("registers, ffn", [(0, "mlp"), (2, "swiglufused")])
def test_packed_forward_and_grads_equal_separate_forwards(registers, ffn):
    torch.manual_seed(0)
    model = build_vit("vit_pico", img_size=56, num_register_tokens=registers, ffn_layer=ffn, init_values=0.5)
    model.train()  # drop_path_rate is 0 for vit_pico, so training mode is deterministic
    glob, loc = _crops()
    masks = torch.rand(4, 16) < 0.3
    weights = [torch.randn(4, 1 + registers + 16, 64), torch.randn(6, 1 + registers + 4, 64)]

    def loss_of(outs):
        return sum((o["x_prenorm"] * w).sum() + o["x_norm_clstoken"].pow(2).sum() for o, w in zip(outs, weights))

    packed = model.forward_features([glob, loc], masks=[masks, None])
    loss_of(packed).backward()
    grads_packed = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()

    separate = [model.forward_features(glob, masks), model.forward_features(loc)]
    loss_of(separate).backward()
    for p_out, s_out in zip(packed, separate):
        for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
            torch.testing.assert_close(p_out[key], s_out[key], atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads_packed[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert grads_packed["pos_embed"].abs().sum() > 0 and grads_packed["mask_token"].abs().sum() > 0


def test_packed_flag_off_gives_same_outputs():
    model = build_vit("vit_pico", img_size=56).eval()
    glob, loc = _crops(1)
    packed = model.forward_features([glob, loc])
    model.packed = False
    unpacked = model.forward_features([glob, loc])
    for p_out, u_out in zip(packed, unpacked):
        torch.testing.assert_close(p_out["x_prenorm"], u_out["x_prenorm"], atol=1e-5, rtol=1e-5)


def test_block_accepts_plain_batch_and_packed_tokens():
    torch.manual_seed(0)
    block = Block(16, 2, init_values=1.0).eval()
    a, b = torch.randn(3, 5, 16), torch.randn(2, 7, 16)
    packing = Packing.of([a, b])
    out_a, out_b = packing.unpack(block(packing.pack([a, b]), packing))
    torch.testing.assert_close(out_a, block(a))
    torch.testing.assert_close(out_b, block(b))
