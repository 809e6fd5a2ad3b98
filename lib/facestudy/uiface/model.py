"""The UIFace generator: an identity-conditioned UNet, in an autoencoder's latent or in pixels (chapter 2).

The paper (METHODS.md §2.2) runs a 216 M-parameter ConditionalUNet in the 3×32×32 latent of a VQ-f4
autoencoder. Its weights are not redistributed, so the book trains its own f4 autoencoder
(:mod:`.autoencoder`) and a small diffusers :class:`~diffusers.UNet2DConditionModel` in that latent
(``latent_channels > 0``: a 32-px face is an 8×8 latent); ``latent_channels = 0`` keeps the first build's
pixel-space UNet for comparison (``--set latent_channels=0``). Its
transformer blocks have the same three sub-layers as the paper's ``SpatialEmbeddingCrossAttentionBlock``
(self-attention, cross-attention to the identity tokens, feed-forward), which is what the sampling tricks
of §2.4 act on.

Identity context (§2.2–2.3): the L2-normalised embedding of a real face-recognition model is projected to
a context vector ``c`` (``Linear(embed_dim -> context_dim)``), passed through *context partial dropout*
(elementwise ``Dropout(0.25)``, training only), replaced by a **learnable empty context** ``e`` with
probability ``p_empty = 0.2`` per sample (training only), and finally turned into ``n_tokens`` tokens of
``token_dim`` channels (Linear + GroupNorm, shared by all attention blocks: the paper has one token
projection per block; one shared projection is our simplification).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParameterError

PREDICTIONS = ("epsilon", "v_prediction", "sample")


@dataclass
class GeneratorConfig:
    """Sizes of the UIFace generator (chapter 2). Every field comes from the profile table."""

    image_size: int = 32
    embed_dim: int = 128  # dimension of the face-recognition embedding used as identity
    context_dim: int = 256  # projected context c (the paper's 256)
    n_tokens: int = 8  # context tokens seen by cross-attention (paper: 32)
    token_dim: int = 64  # channels per token (= UNet cross_attention_dim)
    channels: tuple[int, ...] = (32, 64, 64, 64)  # UNet widths per resolution level
    attn_levels: tuple[bool, ...] = (False, False, True, True)  # transformer blocks at these levels
    layers_per_block: int = 1
    head_dim: int = 16
    norm_groups: int = 8
    cpd: float = 0.25  # context partial dropout (IDiff-Face / UIFace)
    p_empty: float = 0.2  # probability of the learnable empty context during training
    prediction: str = "epsilon"  # UNet target: "epsilon" (the paper) | "v_prediction" | "sample" (x0)
    latent_channels: int = 0  # 0: pixel space; C > 0: the UNet runs in a C×(S/4)×(S/4) autoencoder latent
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.attn_levels = tuple(bool(a) for a in self.attn_levels)
        if len(self.channels) != len(self.attn_levels):
            raise ParameterError(f"uiface generator: channels {self.channels} and attn_levels "
                                 f"{self.attn_levels} must have the same length (one entry per UNet level)")
        if not any(self.attn_levels):
            raise ParameterError("uiface generator: attn_levels needs at least one True level (the identity "
                                 "enters only through cross-attention)")
        if self.latent_channels < 0 or (self.latent_channels and self.image_size % 4):
            raise ParameterError(f"uiface generator: latent_channels must be >= 0 (0 = pixel space) and a latent "
                                 f"generator needs an image_size divisible by 4; got {self.latent_channels}, "
                                 f"{self.image_size}")
        if self.sample_size % (2 ** (len(self.channels) - 1)):
            raise ParameterError(f"uiface generator: the UNet's input side {self.sample_size} (image_size "
                                 f"{self.image_size}{' / 4' if self.latent_channels else ''}) must be divisible "
                                 f"by 2**(levels-1) = {2 ** (len(self.channels) - 1)}")
        if self.prediction not in PREDICTIONS:
            raise ParameterError(f"uiface generator: prediction {self.prediction!r} is unknown; use one of "
                                 f"{', '.join(PREDICTIONS)}")
        if not 0.0 <= self.cpd < 1.0 or not 0.0 <= self.p_empty <= 1.0:
            raise ParameterError(f"uiface generator: cpd must lie in [0, 1) and p_empty in [0, 1]; got "
                                 f"cpd={self.cpd}, p_empty={self.p_empty}")

    @property
    def sample_size(self) -> int:
        """Side of what the UNet denoises: the image, or the f4 latent of a latent generator."""
        return self.image_size // 4 if self.latent_channels else self.image_size

    @property
    def sample_channels(self) -> int:
        return self.latent_channels or 3


class ContextEncoder(nn.Module):
    """Identity embedding -> cross-attention tokens, with CPD and the learnable empty context (chapter 2).

    ``forward(emb)`` in training mode applies context partial dropout and, per sample with probability
    ``p_empty``, replaces ``c`` by the learnable empty context. In eval mode neither happens. Pass
    ``empty_mask`` (bool, one per sample) to choose the empty context explicitly (sampling).
    """

    def __init__(self, embed_dim: int = 128, context_dim: int = 256, n_tokens: int = 8, token_dim: int = 64,
                 cpd: float = 0.25, p_empty: float = 0.2, norm_groups: int = 8) -> None:
        super().__init__()
        self.embed_dim, self.n_tokens, self.token_dim = embed_dim, n_tokens, token_dim
        self.p_empty = p_empty
        self.proj = nn.Linear(embed_dim, context_dim)
        self.cpd = nn.Dropout(cpd)
        self.empty = nn.Parameter(torch.randn(context_dim))  # the paper's learnable empty context, N(0, 1)
        self.to_tokens = nn.Linear(context_dim, n_tokens * token_dim)
        groups = norm_groups if token_dim % norm_groups == 0 else 1
        self.norm = nn.GroupNorm(groups, token_dim)

    def context(self, emb: torch.Tensor, empty_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The projected context ``c`` (B, context_dim) after CPD / empty-context substitution."""
        if emb.ndim != 2 or emb.shape[1] != self.embed_dim:
            raise ParameterError(f"identity embeddings must be (N, {self.embed_dim}); got {tuple(emb.shape)}")
        c = self.cpd(self.proj(F.normalize(emb.float(), dim=1)))
        if empty_mask is None and self.training and self.p_empty > 0:
            empty_mask = torch.rand(c.shape[0], device=c.device) < self.p_empty
        if empty_mask is not None:
            c = torch.where(empty_mask.to(c.device)[:, None], self.empty.expand_as(c), c)
        return c

    def tokens_from_context(self, c: torch.Tensor) -> torch.Tensor:
        t = self.to_tokens(c).view(c.shape[0], self.token_dim, self.n_tokens)
        return self.norm(t).transpose(1, 2).contiguous()  # (B, n_tokens, token_dim)

    def forward(self, emb: torch.Tensor, empty_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.tokens_from_context(self.context(emb, empty_mask))

    def empty_tokens(self, n: int) -> torch.Tensor:
        """Tokens of the learnable empty context, repeated ``n`` times (the 'unconditional' input)."""
        return self.tokens_from_context(self.empty[None].expand(n, -1))


class UIFaceGenerator(nn.Module):
    """Context encoder + diffusers UNet (chapter 2).

    The UNet predicts ``config.prediction``: the noise ε (the paper), the velocity v = √ᾱ ε − √(1−ᾱ) x₀, or
    the clean image x₀ ("sample"); :meth:`DDPMSchedule.split` turns any of them into (x̂₀, ε̂) for DDIM.
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        import warnings

        with warnings.catch_warnings():  # diffusers imports tqdm.auto, which warns in a kernel without ipywidgets
            warnings.filterwarnings("ignore", message="IProgress not found")
            from diffusers import UNet2DConditionModel

        cfg = config or GeneratorConfig()
        self.config = cfg
        self.context = ContextEncoder(cfg.embed_dim, cfg.context_dim, cfg.n_tokens, cfg.token_dim, cfg.cpd,
                                      cfg.p_empty, cfg.norm_groups)
        n = len(cfg.channels)
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attn_levels)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attn_levels))
        self.unet = UNet2DConditionModel(
            sample_size=cfg.sample_size, in_channels=cfg.sample_channels, out_channels=cfg.sample_channels,
            block_out_channels=cfg.channels,
            down_block_types=down, up_block_types=up, layers_per_block=cfg.layers_per_block,
            cross_attention_dim=cfg.token_dim, attention_head_dim=cfg.head_dim, norm_num_groups=cfg.norm_groups,
            mid_block_type="UNetMidBlock2DCrossAttn" if cfg.attn_levels[-1] else None,
        )
        self.n_levels = n
        self.autoencoder = None  # a latent generator's frozen FaceAutoencoder, attached after training

    def attach_autoencoder(self, ae) -> UIFaceGenerator:
        """Give a latent generator its (frozen) decoder, so that sampling returns images (chapter 2)."""
        if not self.config.latent_channels:
            raise ParameterError("attach_autoencoder: this generator works in pixel space (latent_channels = 0)")
        if (ae.config.latent_channels != self.config.latent_channels
                or ae.config.image_size != self.config.image_size):
            raise ParameterError(f"attach_autoencoder: the autoencoder makes {ae.config.latent_channels}-channel "
                                 f"latents of {ae.config.image_size}-px images; the generator expects "
                                 f"{self.config.latent_channels} channels at {self.config.image_size} px")
        for p in ae.parameters():
            p.requires_grad_(False)
        self.autoencoder = ae.eval()
        return self

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """What the sampler ends with -> images in [-1, 1] (decoded by the autoencoder for a latent model)."""
        if not self.config.latent_channels:
            return x
        if self.autoencoder is None:
            raise ParameterError("a latent UIFace generator needs its autoencoder attached (attach_autoencoder) "
                                 "before sampling images")
        return self.autoencoder.decode(x).clamp(-1, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The UNet output at (x_t, t, tokens): ε̂, v̂ or x̂₀ depending on ``config.prediction``."""
        return self.unet(x, t, encoder_hidden_states=tokens).sample

    def config_dict(self) -> dict:
        return asdict(self.config)


def images_to_model(images, size: int) -> torch.Tensor:
    """uint8 NHWC (numpy or torch) -> float NCHW in [-1, 1] at ``size``×``size`` (area downsampling)."""
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ParameterError(f"images must be uint8 (N, H, W, 3); got shape {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != size or x.shape[-2] != size:
        if x.shape[-1] > size:
            x = F.interpolate(x, size=(size, size), mode="area")
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.contiguous()


def model_to_images(x: torch.Tensor) -> torch.Tensor:
    """float NCHW in [-1, 1] -> uint8 NHWC (CPU tensor)."""
    return ((x.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().contiguous()


def resize_uint8(images, size: int) -> torch.Tensor:
    """Bilinearly resize a uint8 NHWC batch (e.g. 32-px samples -> 112 px for the real FR model)."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float()
    mode = "area" if x.shape[-1] > size else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    y = F.interpolate(x, size=(size, size), mode=mode, **kw)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
