"""facestudy.interpret: chapter 4 (FaceMINT) - sparse autoencoders on face templates, interpretability
scores, feature ablation and activation maximisation.

* :mod:`.saes` - vanilla / gated / TopK / JumpReLU SAEs, PCA baseline, trainer, metrics;
* :mod:`.analysis` - grid search, densities, dataset search, AUROC scores, contrastive sets, ablation;
* :mod:`.overlays` - mask / sunglasses overlays placed from landmarks on real faces;
* :mod:`.actmax` - objectives, parameterisations, transforms, render loop, faceness.
"""
from . import actmax, analysis, overlays, saes  # noqa: F401
