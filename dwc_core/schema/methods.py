"""Options of the ``model:`` section, per method. Torch-free: the config is validated without torch."""

from __future__ import annotations

from dwc_core.schema import Opt, Section

CNN: Section = {
    "arch": Opt("str", "resnet18", choices=("resnet18", "resnet50", "tiny"), help="torchvision CNN or a tiny CPU CNN"),
    "pretrained": Opt("str", "none", help="imagenet | none | path to a state_dict file"),
}

LSTM_TEXT: Section = {
    "word_dim": Opt("int", 512, help="word embedding size", min=1),
    "hidden": Opt("int", 512, help="LSTM hidden size", min=1),
}

METHODS: dict[str, Section] = {
    "tirg": {
        "embed_dim": Opt("int", 512, help="joint embedding size", min=1),
        "cnn": CNN,
        "text": LSTM_TEXT,
        "loss": Opt(
            "str",
            "batch_based_classification",
            choices=("batch_based_classification", "soft_triplet"),
            help="training loss",
        ),
        "optimizer": Opt("str", "adam", choices=("adam", "sgd"), help="adam, or SGD with momentum 0.9 (original TIRG)"),
        "backbone_lr_mult": Opt("float", 1.0, help="lr multiplier of the CNN backbone (original: 0.1)", min=0),
    },
}

METHOD_NAMES = tuple(METHODS)

COMMON: Section = {
    "name": Opt("str", None, choices=METHOD_NAMES, help="which method"),
}


def model_section(name: str) -> Section:
    return {**COMMON, **METHODS.get(name, {})}
