"""Methods (DWC and baselines) behind one interface (:mod:`dwc_core.models.base`). Importing this package
registers every method; it imports torch, so only training/evaluation code imports it."""

from dwc_core.models import amc  # noqa: F401
from dwc_core.models import clip4cir  # noqa: F401
from dwc_core.models import composeae  # noqa: F401
from dwc_core.models import dwc  # noqa: F401
from dwc_core.models import tirg  # noqa: F401
from dwc_core.models.base import METHODS, BuildContext, Method, build_method

__all__ = ["METHODS", "BuildContext", "Method", "build_method"]
