"""facestudy.geometry: chapter 1, "Attributes shape the embedding space" (Leroy et al., ICML 2025).

- :mod:`.macroscale`  KS protocol across identities (one image per identity per modality), Holm / BH
  correction, identity-bootstrap CIs, max / mean / count-weighted aggregates;
- :mod:`.entropy`     intra- and inter-identity attribute entropies, Spearman tables, ranking agreement;
- :mod:`.probes`      5-fold logistic attribute probes (balanced accuracy, identity-grouped folds);
- :mod:`.energy`      invariance energy from central-difference fields (kNN, epsilon-ball, inverse-distance),
  per-identity tables, Mann-Whitney tests;
- :mod:`.imageops`    brightness / contrast / hue / blur / roll / scale as torch image operations;
- :mod:`.lattices`    one-attribute curves from image operations or from any batch renderer;
- :mod:`.world`       synthetic-world lattices and binary attributes (:mod:`facestudy.faceworld`);
- :mod:`.finetune`    attribute augmentation for the fine-tune validation, cache keys;
- :mod:`.paper`       the paper profile's user-supplied checkpoints;
- :mod:`.heads`       loss-family tails trained on the frozen real MobileFaceNet trunk's cached features;
- :mod:`.claims`      the paper's claims G1-G4 as calibrated rules (:mod:`facestudy.stats` / :mod:`facestudy.report`).
"""
from . import claims, energy, entropy, finetune, heads, imageops, lattices, macroscale, paper, probes, world  # noqa: F401
