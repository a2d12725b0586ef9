"""The DINOv2 Vision Transformer backbone.

Tokens of one image: [CLS, register_1..R, patch_1..N]. Positional embeddings are learned for
CLS + the native patch grid and bicubically resized for other input sizes; registers get none.
For iBOT, masked patch embeddings are replaced by a learned `mask_token` before the positional
embedding is added, so the model still knows where the hidden patch was.

`forward_features` takes one batch or a list of batches of different resolutions (the global
and local crops of a training step). A list runs packed: all crops go through every block as one
token sequence with block-diagonal attention (see `models.packing`); `packed=False` runs each
crop batch on its own, with identical results.

Module and parameter names follow the official DINOv2 code, so released state dicts load with an
identity key mapping (see `models.official_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import AttnImpl
from models.block import Block
from models.drop_path import DropPathMode, drop_path_rates
from models.packing import Packing
from models.patch_embed import PatchEmbed


def _pair(x: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(x, int):
        return x, x
    h, w = x
    return int(h), int(w)


class VisionTransformer(nn.Module):
    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 14,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        ffn_layer: str = "mlp",
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        init_values: float | None = 1e-5,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = True,
        drop_path_mode: DropPathMode = "subset",
        num_register_tokens: int = 0,
        interpolate_antialias: bool = True,
        interpolate_offset: float = 0.0,
        attn_impl: AttnImpl = "auto",
        packed: bool = True,
    ) -> None:
        """Arguments match DINOv2's `DinoVisionTransformer` where they overlap.

        img_size: training resolution; fixes the native positional-embedding grid (518 for the
            released weights, 224 for training). Any multiple of `patch_size` is accepted later.
        init_values: LayerScale init; None or 0 disables LayerScale.
        drop_path_uniform: same stochastic-depth rate in every block (DINOv2) instead of a ramp.
        drop_path_mode: "subset" (efficient, compute only on kept crops) or "per_sample".
        interpolate_antialias / interpolate_offset: how positional embeddings are resized. The
            released reg4 models use (True, 0.0); the older ones (False, 0.1), where 0.1 is a
            legacy offset added to the target grid before computing the scale factor.
        attn_impl: "sdpa", "xformers" or "auto" (see `models.attention`).
        packed: run a list of crop batches as one packed sequence (True) or one by one (False).
        """
        super().__init__()
        if num_register_tokens < 0:
            raise ValueError("num_register_tokens must be >= 0")
        self.embed_dim = self.num_features = embed_dim
        self.patch_size = patch_size
        self.n_blocks = depth
        self.num_heads = num_heads
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.packed = packed

        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        h, w = self.img_size = _pair(img_size)
        self.pos_grid = self.patch_embed.grid_size(h, w)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid[0] * self.pos_grid[1], embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

        rates = drop_path_rates(drop_path_rate, depth, drop_path_uniform)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                ffn_layer=ffn_layer,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
                init_values=init_values,
                drop_path=rate,
                drop_path_mode=drop_path_mode,
                attn_impl=attn_impl,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """timm ViT init as in DINOv2: trunc-normal(0.02) linears and pos_embed, tiny CLS/registers."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def set_attn_impl(self, attn_impl: AttnImpl) -> None:
        for block in self.blocks:
            block.attn.attn_impl = attn_impl

    # ---- tokens -------------------------------------------------------------------------------

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int, force: bool = False) -> Tensor:
        """Positional embeddings [1, 1 + grid_h * grid_w, D] for a grid_h x grid_w patch grid.

        At the native grid the stored table is returned as is (unless `force`, used by tests to
        check that resizing to the same size is the identity).
        """
        if (grid_h, grid_w) == self.pos_grid and not force:
            return self.pos_embed
        dtype = self.pos_embed.dtype
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        gh, gw = self.pos_grid
        patch_pos = patch_pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            # The legacy rule passes a scale factor, which also sets the sampling positions.
            scale = ((grid_h + self.interpolate_offset) / gh, (grid_w + self.interpolate_offset) / gw)
            kwargs = {"scale_factor": scale}
        else:
            kwargs = {"size": (grid_h, grid_w)}
        patch_pos = F.interpolate(patch_pos, mode="bicubic", antialias=self.interpolate_antialias, **kwargs)
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(f"resized positional grid {tuple(patch_pos.shape[-2:])} != {(grid_h, grid_w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((cls_pos, patch_pos), dim=1).to(dtype)

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Images [B, C, H, W] (+ optional bool masks [B, N] or [B, h, w]) -> tokens [B, 1+R+N, D]."""
        b, _, height, width = x.shape
        grid_h, grid_w = self.patch_embed.grid_size(height, width)
        tokens = self.patch_embed(x)
        if masks is not None:
            masks = masks.reshape(b, -1)
            if masks.shape[1] != tokens.shape[1]:
                raise ValueError(f"masks cover {masks.shape[1]} patches, the image has {tokens.shape[1]}")
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(grid_h, grid_w).to(tokens.dtype)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(b, -1, -1).to(tokens.dtype)
            tokens = torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1)
        return tokens

    # ---- blocks -------------------------------------------------------------------------------

    def _run_blocks(
        self, tokens: list[Tensor], take: Sequence[int] = ()
    ) -> tuple[list[Tensor], dict[int, list[Tensor]]]:
        """Run token batches through all blocks, packed together or one by one.

        Returns the final [B_i, N_i, D] outputs and, for every block index in `take`, that
        block's outputs.
        """
        runs = [tokens] if self.packed else [[t] for t in tokens]
        finals: list[Tensor] = []
        taken: dict[int, list[Tensor]] = {i: [] for i in take}
        for run in runs:
            packing = Packing.of(run)
            h = packing.pack(run)
            for i, block in enumerate(self.blocks):
                h = block(h, packing)
                if i in taken:
                    taken[i].extend(packing.unpack(h))
            finals.extend(packing.unpack(h))
        return finals, taken

    def _output(self, x: Tensor, masks: Tensor | None) -> dict[str, Tensor | None]:
        x_norm = self.norm(x)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : r + 1],
            "x_norm_patchtokens": x_norm[:, r + 1 :],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward_features(
        self, x: Tensor | Sequence[Tensor], masks: Tensor | Sequence[Tensor | None] | None = None
    ) -> dict[str, Tensor | None] | list[dict[str, Tensor | None]]:
        """One batch -> one output dict; a list of batches (e.g. global and local crops) -> a list.

        `masks` (bool, True = replace the patch by the mask token) is a tensor for one batch, or
        a list with one entry (tensor or None) per batch.
        """
        if isinstance(x, Tensor):
            return self.forward_features([x], [masks])[0]
        x = list(x)
        if isinstance(masks, Tensor):
            raise TypeError("with a list of image batches, pass masks as a list (one tensor or None per batch)")
        masks_list = [None] * len(x) if masks is None else list(masks)
        if len(masks_list) != len(x):
            raise ValueError(f"got {len(x)} image batches but {len(masks_list)} masks")
        tokens = [self.prepare_tokens_with_masks(img, m) for img, m in zip(x, masks_list)]
        outputs, _ = self._run_blocks(tokens)
        return [self._output(out, m) for out, m in zip(outputs, masks_list)]

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last `n` blocks (int) or of the listed block indices, as in DINOv2.

        Each output is the patch tokens [B, N, D] (or [B, D, h, w] with `reshape`), after the
        final norm if `norm`; with `return_class_token` each entry is (patch tokens, CLS).
        """
        depth = len(self.blocks)
        indices = list(range(depth - n, depth)) if isinstance(n, int) else [int(i) for i in n]
        if not indices or any(i < 0 or i >= depth for i in indices):
            raise ValueError(f"block indices {indices} out of range for {depth} blocks")
        _, taken = self._run_blocks([self.prepare_tokens_with_masks(x)], take=indices)
        outputs = [taken[i][0] for i in indices]
        if norm:
            outputs = [self.norm(out) for out in outputs]
        class_tokens = [out[:, 0] for out in outputs]
        patches = [out[:, 1 + self.num_register_tokens :] for out in outputs]
        if reshape:
            b, _, height, width = x.shape
            gh, gw = self.patch_embed.grid_size(height, width)
            patches = [p.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, class_tokens))
        return tuple(patches)

    def forward(self, x: Tensor | Sequence[Tensor], masks=None, is_training: bool = False):
        """The output dict(s) when `is_training`, else the normalised CLS token (DINOv2 semantics)."""
        out = self.forward_features(x, masks)
        if is_training:
            return out
        if isinstance(out, list):
            return [self.head(o["x_norm_clstoken"]) for o in out]
        return self.head(out["x_norm_clstoken"])
