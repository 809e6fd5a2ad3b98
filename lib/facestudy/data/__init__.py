"""facestudy.data: manifests, data roots + cache, verified files, face formats, real datasets, MTCNN,
alignment and preparation (the data layer; see book/data.md)."""
from .faceset import LANDMARK_COLUMNS, FaceSet, FaceTorchDataset, concat  # noqa: F401
