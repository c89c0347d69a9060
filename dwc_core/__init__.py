"""dwc_core: data, models, losses, training, evaluation and the run registry.

Importing this package is cheap: nothing here imports torch at module import time except the modules that
train or evaluate (``train``, ``evaluate``, ``models``, ``losses``, ``data.loading``).
"""

__version__ = "0.1.0"
