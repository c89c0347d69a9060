"""Options of the ``model:`` section, per method. Torch-free: the config is validated without torch."""

from __future__ import annotations

from dwc_core.config.schema import Opt, Section

CNN: Section = {
    "arch": Opt(
        "str", "resnet18", choices=("resnet18", "resnet50", "tiny"), help="torchvision CNN or a tiny CPU CNN"
    ),
    "pretrained": Opt("str", "none", help="imagenet | none | path to a state_dict file"),
}

LSTM_TEXT: Section = {
    "word_dim": Opt("int", 512, help="word embedding size", min=1),
    "hidden": Opt("int", 512, help="LSTM hidden size", min=1),
}

AMC_CNN: Section = {
    "arch": Opt(
        "str", "resnet50", choices=("resnet18", "resnet50", "tiny"), help="backbone (original: resnet50)"
    ),
    "pretrained": Opt(
        "str", "imagenet", help="imagenet | none | path to a state_dict file (original: imagenet)"
    ),
}

CLIP: Section = {
    "arch": Opt("str", "RN50", help="open_clip architecture: RN50, ViT-B-32, ... (tiny, tiny-rn: CPU)"),
    "pretrained": Opt("str", "openai", help="open_clip tag (openai), a local weights file, or none (random)"),
}

DWC_CLIP: Section = {
    **CLIP,
    "trainable": Opt("bool", False, help="fine-tune CLIP with the CLIP-stream optimizer (official: frozen)"),
    "precision": Opt(
        "str",
        "auto",
        choices=("auto", "fp32", "fp16", "bf16"),
        help="frozen CLIP's precision; auto = fp16 on GPU (bf16 if the run is bf16), else as the run",
    ),
}

DWC_CNN: Section = {
    "arch": Opt("str", "resnet50", choices=("resnet18", "resnet50", "tiny"), help="official: resnet50"),
    "pretrained": Opt("str", "imagenet", help="imagenet | none | a state_dict file (official: imagenet)"),
}

DWC: Section = {
    "embed_dim": Opt("int", 1024, help="embedding size of both streams = LSTM hidden; multiple of 8", min=8),
    "streams": Opt("str", "both", choices=("both", "clip", "cnn"), help="both (mutual learning) or one"),
    "editors": Opt("str", "on", choices=("on", "off"), help="modality editors (CLIP gates, CNN EMD)"),
    "combiner": Opt("str", "adaptive", choices=("adaptive", "sum"), help="adaptive weighted combiner or sum"),
    "teacher_targets": Opt(
        "str",
        "reference",
        choices=("reference", "target"),
        help="teacher's gallery side in the mutual KL: reference image (official code) or target (intended)",
    ),
    "ssg_alpha": Opt("float", 0.2, help="SSG soft-label share (0 = hard labels only)", min=0, max=1),
    "ssg_tau": Opt("float", 0.07, help="SSG temperature", min=1e-6),
    "ssg_detach": Opt("bool", False, help="detach the SSG soft labels (official: not detached)"),
    "mutual_weight": Opt("float", 1.0, help="weight of the cross-stream KL term (lambda)", min=0),
    "mutual_scale": Opt("float", 10.0, help="logit scale inside the cross-stream KL", min=0),
    "mask_padding": Opt("bool", False, help="mask padded words (official: pad = UNK, not masked)"),
    "clip": DWC_CLIP,
    "cnn": DWC_CNN,
    "text": {"word_dim": Opt("int", 512, help="word embedding size of the LSTM text encoder", min=1)},
}

METHODS: dict[str, Section] = {
    "dwc": DWC,
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
        "optimizer": Opt(
            "str", "adam", choices=("adam", "sgd"), help="adam, or SGD with momentum 0.9 (original TIRG)"
        ),
        "backbone_lr_mult": Opt(
            "float", 1.0, help="lr multiplier of the CNN backbone (original: 0.1)", min=0
        ),
    },
    "amc": {
        "embed_dim": Opt(
            "int", 1024, help="token/query size D (= LSTM hidden size); divisible by heads", min=2
        ),
        "hid_router": Opt("int", 512, help="router hidden size", min=1),
        "heads": Opt("int", 8, help="attention heads of the GlobalCell", min=1),
        "cnn": AMC_CNN,
        "text": {
            "word_dim": Opt("int", 300, help="word embedding size (300 = GloVe)", min=1),
            "glove": Opt(
                "path",
                None,
                nullable=True,
                help="GloVe .txt file to initialise the word embeddings (null = random)",
            ),
        },
        "class_weight": Opt("float", 1.0, help="weight of CE(10·cos) query→target", min=0),
        "sim_weight": Opt("float", 1.0, help="weight of the Gram-matrix MSE on [q1; q]", min=0),
    },
    "composeae": {
        "embed_dim": Opt("int", 512, help="image feature size d (fc output) = composed size", min=1),
        "cnn": {
            "arch": Opt(
                "str", "resnet18", choices=("resnet18", "resnet50", "tiny"), help="original: resnet18"
            ),
            "pretrained": Opt(
                "str", "imagenet", help="imagenet | none | a state_dict file (original: imagenet)"
            ),
        },
        "text_encoder": {
            "arch": Opt(
                "str", "ViT-B-32", help="open_clip model whose frozen text tower replaces BERT (tiny: CPU)"
            ),
            "pretrained": Opt(
                "str", "openai", help="open_clip tag (openai), a local weights file, or none (random)"
            ),
            "cache": Opt("bool", True, help="memoise the frozen sentence vectors per caption"),
        },
        "conv_channels": Opt("int", 64, help="Conv1d channels C of the conv mapping (original 64)", min=1),
        "pool_len": Opt(
            "int", 16, help="adaptive max-pool length P of the conv mapping (original 16)", min=1
        ),
        "loss": Opt(
            "str",
            "batch_based_classification",
            choices=("batch_based_classification", "soft_triplet"),
            help="L_base, also used by the rotational-symmetry term",
        ),
        "img_rec_weight": Opt("float", 0.1, help="weight of the image reconstruction MSE", min=0),
        "txt_rec_weight": Opt("float", 0.1, help="weight of the text reconstruction MSE", min=0),
        "rot_weight": Opt("float", 0.01, help="weight of the rotational-symmetry loss", min=0),
        "optimizer": Opt(
            "str", "sgd", choices=("sgd", "adam"), help="SGD momentum 0.9 (original, lr 1e-2) or Adam"
        ),
        "backbone_lr_mult": Opt("float", 0.1, help="lr multiplier of the CNN backbone (not its fc)", min=0),
    },
    "clip4cir": {
        "clip": {
            "arch": Opt("str", "RN50x4", help="open_clip architecture (original RN50x4; tiny, tiny-rn: CPU)"),
            "pretrained": Opt(
                "str",
                "openai",
                help="open_clip tag (openai), a local weights file (e.g. a stage-1 "
                "checkpoint), or none (random)",
            ),
            "trainable": Opt(
                "bool", False, help="fine-tune CLIP too (stage 1; with combiner: sum exactly stage 1)"
            ),
            "lr_mult": Opt(
                "float", 1.0, help="CLIP's lr multiplier when trainable (stage 1 2e-6 vs 2e-5)", min=0
            ),
        },
        "combiner": Opt(
            "str",
            "combiner",
            choices=("combiner", "sum"),
            help="the Combiner network, or the L2norm(i + t) baseline",
        ),
        "projection_dim": Opt(
            "int", None, nullable=True, help="Combiner projection size P (null = 4·CLIP dim)", min=1
        ),
        "hidden_dim": Opt(
            "int", None, nullable=True, help="Combiner hidden size H (null = 8·CLIP dim)", min=1
        ),
        "dropout": Opt("float", 0.5, help="Combiner dropout", min=0, max=1),
        "logit_scale": Opt("float", 100.0, help="fixed logit scale of the CE loss (temperature 0.01)", min=0),
        "optimizer": Opt(
            "str",
            "adam",
            choices=("adam", "adamw"),
            help="adam (stage 2, wd 0) or adamw (stage 1, eps 1e-7, wd 0.01)",
        ),
    },
}

METHOD_NAMES = tuple(METHODS)

COMMON: Section = {
    "name": Opt("str", None, choices=METHOD_NAMES, help="which method"),
}


def model_section(name: str) -> Section:
    return {**COMMON, **METHODS.get(name, {})}
