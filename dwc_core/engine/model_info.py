"""Parameter counts of every method at its default (real-size) configuration, built with random weights.

Run as ``python -m dwc_core.engine.model_info [METHOD ...]``: prints JSON ``{method: {part: count}}``. The CLI calls it
in a subprocess (and caches the answer) so that ``dwc models`` itself never imports torch.
"""

from __future__ import annotations

import json
import sys


def _no_weights(section: dict) -> dict:
    out = {}
    for key, value in section.items():
        if isinstance(value, dict):
            out[key] = _no_weights(value)
        elif key == "pretrained":
            out[key] = "none"
        else:
            out[key] = value
    return out


def parameter_counts(method: str) -> dict[str, int]:
    import torch

    from dwc_core.config.experiments import default_config
    from dwc_core.models import BuildContext, build_method

    opts = _no_weights(default_config(method=method)["model"])
    texts = ["make it red and sleeveless", "is darker and has longer sleeves"]
    ctx = BuildContext(train_texts=texts, num_labels=2, image_size=224, device=torch.device("cpu"))
    return build_method(opts, ctx).parameter_counts()


def main(argv: list[str]) -> int:
    from dwc_core.config.schema.methods import METHOD_NAMES

    names = argv or list(METHOD_NAMES)
    print(json.dumps({name: parameter_counts(name) for name in names}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
