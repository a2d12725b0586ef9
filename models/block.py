"""Pre-norm transformer block: x + LS1(Attn(LN(x))), then x + LS2(FFN(LN(x))).

The block works on packed tokens ([T, D] plus a `Packing`), so the norms, projections and the
feed-forward run once over all crops of a step; only attention looks at the packing. Each
residual branch has its own stochastic depth draw (see `models.drop_path`).
"""

from __future__ import annotations

from torch import Tensor, nn

from models.attention import Attention, AttnImpl
from models.drop_path import DROP_PATH_MODES, DropPathMode, add_residual
from models.layer_scale import LayerScale
from models.mlp import build_ffn
from models.packing import Packing


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        ffn_layer: str = "mlp",
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        init_values: float | None = 1e-5,
        drop_path: float = 0.0,
        drop_path_mode: DropPathMode = "subset",
        attn_impl: AttnImpl = "auto",
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if drop_path_mode not in DROP_PATH_MODES:
            raise ValueError(f"unknown drop_path_mode {drop_path_mode!r}; expected one of {DROP_PATH_MODES}")
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, attn_impl=attn_impl)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = build_ffn(ffn_layer, dim, mlp_ratio, bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path = drop_path
        self.drop_path_mode = drop_path_mode

    def attn_branch(self, x: Tensor, packing: Packing) -> Tensor:
        return self.ls1(self.attn(self.norm1(x), packing))

    def ffn_branch(self, x: Tensor, packing: Packing) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor, packing: Packing | None = None) -> Tensor:
        """x: packed [T, D] with its `packing`, or a plain batch [B, N, D] with packing=None."""
        if packing is None:
            b, n, d = x.shape
            return self.forward(x.reshape(b * n, d), Packing(((b, n),))).view(b, n, d)
        for branch in (self.attn_branch, self.ffn_branch):
            x = add_residual(x, packing, branch, self.drop_path, self.drop_path_mode, self.training)
        return x
