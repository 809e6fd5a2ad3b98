"""facestudy.faceworld: the procedural synthetic face world (chapter 00a, "The synthetic face world").

The book's embedded default whenever real data is absent, and the exact-control tool of chapters 1-5:
unlimited identities from a seed, per-image attributes with exact ground truth, 3D-consistent rendering
with exact 5-point landmarks, one-attribute lattices, exact semantic edits, and cached FaceSets.

    ids = sample_identities(100, seed=0)
    images, landmarks, visible = render(ids, Attributes(yaw=30))
    lat = lattice(ids[0], "age", [0, .5, 1])
    faces = make_faceset(100, 10, seed=0)             # FaceSet, source="synthetic"
    pairs = synthetic_pairs(faces, 1000, seed=0)        # columns a, b, same, fold
"""
from .attributes import (  # noqa: F401
                         ACCESSORIES,
                         ATTRIBUTE_NAMES,
                         NUISANCE_MODES,
                         RANGES,
                         SWEEPS,
                         Attributes,
                         edit,
                         random_attributes,
)
from .dataset import WORLD_VERSION, lattice, make_faceset, synthetic_pairs  # noqa: F401
from .identity import PARAM_NAMES, PARAMS, Identities, sample_identities  # noqa: F401
from .render import ARCFACE_TEMPLATE_112, hair_rgb, render  # noqa: F401

__all__ = ["Attributes", "Identities", "sample_identities", "random_attributes", "render", "lattice", "edit",
           "make_faceset", "synthetic_pairs", "ATTRIBUTE_NAMES", "SWEEPS", "ARCFACE_TEMPLATE_112"]
