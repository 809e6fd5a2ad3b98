"""Activation maximisation with differentiable image parameterisations (chapter 4, FaceMINT §3.6).

Objectives compose (``channel("conv_2", 3) - 1e-4 * tv()``), parameterisations are separate from
transforms, and :func:`render` runs the loop on a FaceModel (``features(x, layers, grad=True)``);
:func:`render_many` runs independent jobs in lock-step as one batch.
"""
from .objectives import (  # noqa: F401
    Objective,
    channel,
    direction,
    diversity,
    l1,
    l2,
    layer,
    neuron,
    sae_latent,
    tv,
)
from .params import (  # noqa: F401
    PARAMETERISATIONS,
    CPPNParam,
    DIPParam,
    FFTParam,
    PixelParam,
    SkipNet,
    decorrelate_colors,
    make,
    random_fft_background,
)
from .render import RenderJob, RenderResult, evaluate, faceness, render, render_many  # noqa: F401
from .transforms import compose, jitter, pad, random_rotate, random_scale, standard_transforms  # noqa: F401
