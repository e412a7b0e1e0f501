"""Calibration data: the dataset spec grammar, local/hub/in-memory sources and the bundled corpus.

``get_calibration_data(tokenizer, dataset)`` returns rows of exactly ``seqlen`` tokens. ``dataset`` is
None (the hub default ``NeelNanda/pile-10k`` when the hub answers, else the bundled public-domain
corpus), a spec string (see :mod:`signround.calib.spec`), a list of texts, or token ids (tensors, lists
of ints, tokenizer outputs). ``heldout_text()`` is bundled evaluation text no calibration source contains.
"""

from .bundled import heldout_text
from .dataset import DEFAULT_HUB_DATASET, CalibrationData, check_dataset, get_calibration_data
from .hub import HubUnreachableError
from .spec import BUNDLED_NAME, SPEC_OPTIONS, DatasetSpec, parse_dataset_spec

__all__ = [
    "BUNDLED_NAME",
    "CalibrationData",
    "DEFAULT_HUB_DATASET",
    "DatasetSpec",
    "HubUnreachableError",
    "SPEC_OPTIONS",
    "check_dataset",
    "get_calibration_data",
    "heldout_text",
    "parse_dataset_spec",
]
