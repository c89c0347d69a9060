"""Options of the ``trainer:`` and ``eval:`` sections."""

from __future__ import annotations

from dwc_core.config.schema import Opt, Section

TRAINER: Section = {
    "epochs": Opt("int", 30, help="number of training epochs", min=0),
    "batch_size": Opt("int", 32, help="training batch size (per process)", min=2),
    "lr": Opt("float", 1.0e-4, help="base learning rate", min=0),
    "weight_decay": Opt("float", 1.0e-6, help="L2 weight decay", min=0),
    "optimizer_impl": Opt(
        "str",
        "auto",
        choices=("auto", "fused", "foreach", "loop"),
        help="PyTorch's optimizer implementation (same update, different rounding): auto = fused kernels on GPU "
        "(fewer kernel launches: a full-size DWC step at batch 32 is host-bound), PyTorch's choice on CPU",
    ),
    "precision": Opt(
        "str",
        "auto",
        choices=("auto", "bf16", "fp16", "fp32"),
        help="autocast precision; auto = bf16 on a GPU that supports it, fp32 on CPU",
    ),
    "seed": Opt("int", 599, help="one seed for python random, numpy, torch and the data order"),
    "device": Opt("str", "auto", choices=("auto", "cpu", "cuda"), help="where to train"),
    "gpus": Opt("int", 1, help="number of GPUs (>1 launches torchrun with DDP)", min=1),
    "nodes": Opt("int", 1, help="nodes of a Slurm job (dwc worker --slurm); gpus is per node", min=1),
    "num_workers": Opt(
        "int",
        None,
        nullable=True,
        help="DataLoader worker processes (null = auto: 0 on CPU, where batches come from the image cache "
        "in about a millisecond and workers only compete with compute; 4 on a GPU)",
        min=0,
    ),
    "cpu_threads": Opt(
        "int",
        None,
        nullable=True,
        help="CPU threads of the training process (null = a worker gives each run cores / slots; a foreground "
        "run keeps torch's default)",
        min=1,
    ),
    "log_every": Opt("int", 10, help="write step losses every N steps", min=1),
    "eval_every": Opt("int", 1, help="evaluate every N epochs", min=1),
    "eval_at_start": Opt("bool", True, help="evaluate the untrained model as epoch 0"),
    "select_on": Opt(
        "str",
        "test",
        choices=("test", "val_split", "last"),
        help="model selection: test split (as the papers do), a held-out slice of train, or the last epoch",
    ),
    "val_fraction": Opt(
        "float", 0.1, help="share of train held out when select_on=val_split", min=0, max=0.5
    ),
    "val_min_queries": Opt(
        "int",
        50,
        help="fewest validation queries select_on=val_split accepts (lower it to allow a smaller split explicitly)",
        min=1,
    ),
    "schedule": Opt("str", "constant", choices=("constant", "step", "cosine"), help="learning-rate schedule"),
    "lr_decay_epochs": Opt("list[int]", [], help="epochs at which the step schedule multiplies lr by gamma"),
    "gamma": Opt("float", 0.1, help="step-schedule factor", min=0),
    "warmup_steps": Opt("int", 0, help="linear warm-up steps", min=0),
    "grad_clip": Opt("float", 0.0, help="clip gradient norm (0 = off)", min=0),
    "ema": Opt("float", 0.0, help="weight EMA decay (0 = off)", min=0, max=1),
    "ema_mode": Opt(
        "str",
        "swap",
        choices=("swap", "restart"),
        help="swap: evaluate/save the EMA, keep training the live weights; restart: after each evaluation the "
        "live weights become the EMA and the EMA restarts from them (AMC's code)",
    ),
    "channels_last": Opt("bool", True, help="channels_last memory format for CNNs on GPU"),
    "time_budget_min": Opt(
        "float",
        None,
        nullable=True,
        help="stop training after this many minutes of training (evaluation excluded): the epoch in progress "
        "is cut short, evaluated and the run ends done; for comparisons at equal compute",
        min=0,
    ),
    "max_steps_per_epoch": Opt("int", None, nullable=True, help="cap steps per epoch (quick runs)", min=1),
    "nan_skip": Opt("int", 0, help="skip up to N batches with a non-finite loss before failing", min=0),
    "heartbeat_s": Opt("float", 5.0, help="seconds between heartbeats", min=0.5),
}

EVAL: Section = {
    "ks": Opt("list[int]", None, nullable=True, help="Recall@K cut-offs (null = the dataset's protocol)"),
    "batch_size": Opt("int", 128, help="encoding batch size", min=1),
    "chunk_size": Opt("int", 2048, help="queries ranked per matrix multiply", min=1),
    "store_topk": Opt("int", 50, help="gallery ids kept per query for the browser", min=1),
    "query_results": Opt("bool", True, help="store per-query rankings for the best and last epoch"),
}


# Options that existed and were removed: the key is refused with the reason (not a bare "unknown key").
REMOVED: dict[tuple[str, ...], str] = {
    ("trainer", "compile"): "was removed in dwc 0.1: measured on an NVIDIA H100 (full-size DWC, CLIP RN50 + "
    "ResNet-50, batch 32, bf16), torch.compile of the pure-tensor modules gave 1.07x the eager steps/s after "
    "112 s of compilation, under the 1.2x that would justify its start-up cost and recompile risk. Delete the key; "
    "runs train eagerly.",
}
