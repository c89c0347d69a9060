"""The training process (imports torch): trainer, evaluation, checkpoints, runtime, data parallel, reporting."""
