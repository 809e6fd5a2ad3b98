"""facestudy.data: manifests, data roots + cache, verified files, face formats, real datasets, MTCNN,
alignment and preparation (the data layer; see book/data.md)."""
from .align import (  # noqa: F401
    ARCFACE_TEMPLATE_112,
    align,
    similarity_transform,
    template,
    transform_points,
    warp_affine,
)
from .datasets import DATASETS, index, is_prepared, lfw_pairs, load, prepare, status_table  # noqa: F401
from .faceset import LANDMARK_COLUMNS, FaceSet, FaceTorchDataset, concat  # noqa: F401
from .formats import (  # noqa: F401
    LazyImageDataset,
    RecordIOReader,
    RecordIOWriter,
    decode_image,
    encode_jpeg,
    pack_record,
    read_bin,
    read_celeba_attributes,
    read_celeba_identities,
    read_lfw_pairs,
    unpack_record,
    write_bin,
)
from .mtcnn import MTCNN, Detections  # noqa: F401
from .retinaface import DETECTORS, RetinaFace, detector  # noqa: F401
from .store import (  # noqa: F401
    TarReader,
    available,
    cache_dir,
    locate,
    manifest,
    manifests,
    roots,
    safe_extract,
)
