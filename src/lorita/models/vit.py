"""A small Vision Transformer for 32×32 images, plain PyTorch (no LoRITa baked in).

Modelled on the SimpleViT of the official LoRITa code (``arch/simplevit.py``, after lucidrains;
paper-notes §2.3): patches of 4×4 pixels → ``LayerNorm → Linear(patch_dim, dim) → LayerNorm``,
a fixed 2-D sin-cos position embedding (a non-persistent buffer), ``num_layers`` pre-norm blocks
(multi-head self-attention, then a GELU MLP), a final LayerNorm, mean pooling over the tokens (no
class token, no dropout) and a linear head.

Default sizes (:class:`ViT`): 32×32×3 input, patch 4 → 64 tokens of ``patch_dim = 48``;
``dim = 256``, ``num_layers = 6``, ``heads = 8`` × ``dim_head = 32`` (inner 256), ``mlp_dim = 512``:
3,172,714 params with 10 classes.

Attention projections, chosen by ``qkv``:

* ``"joint"`` (the paper's): one ``to_qkv = Linear(dim, 3·inner, bias=False)``, so LoRITa
  factorizes Q, K and V together as one ``3·inner × dim`` matrix;
* ``"separate"``: ``to_q``, ``to_k``, ``to_v``, each ``Linear(dim, inner, bias=False)``,
  factorized (and truncated) one by one, as in Q3R's ``LoRITaQKV``.

Attention itself: ``fused_attn=True`` (the default, as timm's flag where SDPA exists):
``F.scaled_dot_product_attention``, one fused kernel (1.17–1.29× faster dense at batch 64 on one CPU
thread, ``benchmarks/results/vit_sdpa.md``; ``lorita.export_onnx`` exports it, ONNX Runtime runs
it); or ``fused_attn=False``: the explicit ``softmax(q kᵀ/√d) v`` of the authors' code (plain
matmuls, for tools that cannot trace SDPA). Same math and state_dict: outputs equal to float
rounding (~2e-7). lorita's MAC counter counts both the same.

Then ``to_out = Linear(inner, dim, bias=False)``; MLP ``fc1 = Linear(dim, mlp_dim)``,
``fc2 = Linear(mlp_dim, dim)``.

Module names: ``patch_embed.{norm_in,proj,norm_out}``, ``blocks.{l}.attn.{norm,to_qkv|to_q,to_k,
to_v,to_out}``, ``blocks.{l}.mlp.{norm,fc1,fc2}``, ``norm``, ``head``. LoRITa's default targets
(the paper's): every attention projection and MLP Linear inside the blocks — **not** the patch
embedding, the norms, the position embedding or the head (:data:`VIT_TARGETS`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ViT", "vit", "VIT_TARGETS", "sincos_2d"]

VIT_TARGETS = r"blocks\.\d+\.(attn\.to_(qkv|q|k|v|out)|mlp\.fc[12])"
#: timm's ``_cfg`` habit: what the CLI and benchmarks need to know about ``vit`` in one place.
DEFAULT_CFG: dict = {
    "dataset": "cifar10",  # the dataset it is built for
    "input_shape": (3, 32, 32),  # one sample, without the batch axis
    "num_classes": 10,
    "target_modules": VIT_TARGETS,  # LoRITa's default targets (None: every Linear/Conv2d)
    "exclude_modules": None,
    "source": "SimpleViT (Beyer et al. 2022), patch 4; LoRITa §4.3: attention + MLP of the blocks",
    # `lorita train --model vit`'s defaults (flags override; `--recipe none` drops them): measured on
    # CIFAR-10 with a dim-128, 4-block ViT, 15 epochs (README "Fronts at equal epochs",
    # benchmarks/results/fronts_vit_cpu_seeds.md): a third of the epochs plain, then depth 3.
    "recipe": {"depth": 3, "factorize_at_fraction": 1 / 3, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05,
               "epochs": 15, "warmup_epochs": 1.0, "label_smoothing": 0.1, "augment": True},
}


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sin-cos position embedding ``(h·w, dim)`` (SimpleViT's ``posemb_sincos_2d``).

    Raises:
        ValueError: ``dim`` not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"`dim` must be a multiple of 4 for the sin-cos embedding, got {dim}")
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4) / (dim // 4 - 1 if dim > 4 else 1))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1).float()


class PatchEmbed(nn.Module):
    """``(B, C, H, W)`` → ``(B, (H/p)(W/p), dim)``: LayerNorm, Linear, LayerNorm over patches."""

    def __init__(self, patch: int, channels: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        patch_dim = channels * patch * patch
        self.norm_in = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        p = self.patch
        # 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        x = x.reshape(b, (h // p) * (w // p), -1)
        return self.norm_out(self.proj(self.norm_in(x)))


class Attention(nn.Module):
    """Pre-norm multi-head self-attention; ``qkv``: ``"joint"`` or ``"separate"`` projections;
    ``fused_attn``: SDPA (default) instead of the explicit softmax(q kᵀ/√d) v (same math)."""

    def __init__(self, dim: int, heads: int, dim_head: int, qkv: str, fused_attn: bool = True) -> None:
        super().__init__()
        self.heads, self.dim_head, self.qkv, self.fused_attn = heads, dim_head, qkv, fused_attn
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        if qkv == "joint":
            self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        else:
            self.to_q = nn.Linear(dim, inner, bias=False)
            self.to_k = nn.Linear(dim, inner, bias=False)
            self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        x = self.norm(x)
        if self.qkv == "joint":
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        q, k, v = (z.reshape(b, t, self.heads, self.dim_head).transpose(1, 2) for z in (q, k, v))
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v)  # scale 1/√dim_head, as below
        else:
            attn = (q @ k.transpose(-2, -1)) * self.dim_head**-0.5
            out = attn.softmax(dim=-1) @ v
        return self.to_out(out.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """Pre-norm MLP: LayerNorm, ``fc1`` (dim→mlp_dim), GELU, ``fc2`` (mlp_dim→dim)."""

    def __init__(self, dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class Block(nn.Module):
    """``x + attn(x)``, then ``x + mlp(x)``."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, qkv: str,
                 fused_attn: bool = True) -> None:
        super().__init__()
        self.attn = Attention(dim, heads, dim_head, qkv, fused_attn)
        self.mlp = FeedForward(dim, mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class ViT(nn.Module):
    """Small ViT for CIFAR (see the module docstring for the layout and default sizes).

    Args:
        num_classes: head outputs.
        image_size: input height = width (divisible by ``patch``).
        patch: patch side in pixels.
        dim: token width (multiple of 4). num_layers: transformer blocks.
        heads, dim_head: attention heads and their width (inner = heads·dim_head).
        mlp_dim: MLP hidden width.
        qkv: ``"joint"`` (one Q,K,V projection, the paper's) or ``"separate"``.
        in_channels: image channels.
        fused_attn: run attention through ``F.scaled_dot_product_attention`` (the default,
            timm's flag; faster) or, with ``False``, explicit matmuls + softmax (the authors'
            code); same math and state_dict either way.

    Input ``(B, in_channels, image_size, image_size)``; output logits ``(B, num_classes)``.

    Raises:
        ValueError: bad sizes (named) or ``qkv``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        patch: int = 4,
        dim: int = 256,
        num_layers: int = 6,
        heads: int = 8,
        dim_head: int = 32,
        mlp_dim: int = 512,
        qkv: str = "joint",
        in_channels: int = 3,
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        for name, v in (("num_classes", num_classes), ("image_size", image_size), ("patch", patch),
                        ("dim", dim), ("num_layers", num_layers), ("heads", heads), ("dim_head", dim_head),
                        ("mlp_dim", mlp_dim), ("in_channels", in_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {v!r}")
        if image_size % patch:
            raise ValueError(f"`image_size` {image_size} is not divisible by `patch` {patch}")
        if qkv not in ("joint", "separate"):
            raise ValueError(f"`qkv` must be 'joint' or 'separate', got {qkv!r}")
        if not isinstance(fused_attn, bool):
            raise ValueError(f"`fused_attn` must be True or False, got {fused_attn!r}")
        side = image_size // patch
        self.patch_embed = PatchEmbed(patch, in_channels, dim)
        self.register_buffer("pos_embedding", sincos_2d(side, side, dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, dim_head, mlp_dim, qkv, fused_attn) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.num_tokens = side * side

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x) + self.pos_embedding.to(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x).mean(dim=1))


def vit(num_classes: int = 10, **kwargs) -> ViT:
    """The default small CIFAR ViT (3,172,714 params with 10 classes); kwargs as :class:`ViT`."""
    return ViT(num_classes=num_classes, **kwargs)
