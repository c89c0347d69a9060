"""Methods (DWC and baselines) behind one interface (:mod:`dwc_core.models.base`). Importing this package
registers every method; it imports torch, so only training/evaluation code imports it."""

from dwc_core.models import (
    amc,  # noqa: F401
    clip4cir,  # noqa: F401
    composeae,  # noqa: F401
    dwc,  # noqa: F401
    tirg,  # noqa: F401
)
from dwc_core.models.base import METHODS, BuildContext, Method, build_method

__all__ = ["METHODS", "BuildContext", "Method", "build_method"]
