"""The reference space of the spatial priors (Ganaye et al. 2018, section 3.1), by concern.

- :mod:`.folder`: the reference folder on disk (template, atlas, build record, transforms);
- :mod:`.template`: building it from labelled subjects (iterated mean template, atlas);
- :mod:`.registered`: moving a scan into it and its results back to the scan's grid.
"""

from brainseg.preprocessing.reference.folder import (
    ATLAS,
    INFO,
    MODEL_FILES,
    TEMPLATE,
    TRANSFORMS,
    Reference,
    copy_reference,
    load_reference,
    load_transforms,
)
from brainseg.preprocessing.reference.registered import (
    RegisteredImage,
    moving_image,
    register_prepared,
    register_to_reference,
)
from brainseg.preprocessing.reference.template import build_reference, union_grid

__all__ = [
    "ATLAS",
    "INFO",
    "MODEL_FILES",
    "TEMPLATE",
    "TRANSFORMS",
    "Reference",
    "RegisteredImage",
    "build_reference",
    "copy_reference",
    "load_reference",
    "load_transforms",
    "moving_image",
    "register_prepared",
    "register_to_reference",
    "union_grid",
]
