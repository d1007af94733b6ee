"""The registry of studies a sweep runs beside its merge trials (see :mod:`.base`).

Adding a study (e.g. merging many nets) is one :class:`~.base.Study` subclass around its
library call, one entry here, and one config field on :class:`~repair_dist.sweep.config.Sweep`.
"""

from __future__ import annotations

from .base import Study, StudyConfig, StudyInputs, StudySpec
from .curve import CurveConfig, CurveStudy
from .many import MergeManyConfig, MergeManyStudy
from .prune import PruneStudy, PruningConfig

#: Registry name -> study, in the order the runner schedules their units.
STUDIES: dict[str, Study] = {s.name: s for s in (CurveStudy(), PruneStudy(), MergeManyStudy())}


def study(name: str) -> Study:
    """The registered study ``name`` (ValueError naming the known ones otherwise)."""
    try:
        return STUDIES[name]
    except KeyError:
        raise ValueError(f"unknown study {name!r}; choose one of {', '.join(STUDIES)}") from None


__all__ = [
    "STUDIES",
    "CurveConfig",
    "MergeManyConfig",
    "PruningConfig",
    "Study",
    "StudyConfig",
    "StudyInputs",
    "StudySpec",
    "study",
]
