"""GPU-path logic reached on CPU: the data-parallel backend/device choice (faked CUDA), the pre-launch GPU-count
check (DWC_FAKE_GPUS), batch-level evaluation gathers, exact tie order and chunk-size-independent scores, the
checkpoint RNG state loaded onto the training device, and the removed ``trainer.compile`` refused with its reason."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import dwc, write_project

from dwc_core.data.loading import image_batches
from dwc_core.engine import distributed
from dwc_core.engine.distributed import BackendPlan, Dist, choose_backend
from dwc_core.engine.evaluate import SCORE_BLOCK, _scores, encode_images, rank
from dwc_core.errors import ConfigError
from dwc_core.runs.gpus import check_gpu_request

sys.path.insert(0, str(Path(__file__).parent))
from test_dwc import make_batch, make_model  # noqa: E402


# ------------------------------------------------------------------------------------------ backend / device
def test_cpu_device_gives_gloo_processes_even_with_cuda():
    assert choose_backend("cpu", True, 1, 1, 2) == BackendPlan("gloo", "cpu")
    assert choose_backend("auto", False, 0, 1, 2) == BackendPlan("gloo", "cpu")
    assert choose_backend("auto", True, 2, 1, 2) == BackendPlan("nccl", "cuda")
    assert choose_backend("cuda", True, 4, 3, 4) == BackendPlan("nccl", "cuda")


@pytest.mark.parametrize("choice", ["cuda", "auto"])
def test_a_rank_without_a_gpu_is_a_clear_error(choice):
    with pytest.raises(ConfigError, match=r"trainer.gpus = 2 .* only 1 GPU\(s\) visible.*local rank 1"):
        choose_backend(choice, True, 1, 1, 2)
    with pytest.raises(ConfigError, match="no CUDA device"):
        choose_backend("cuda", False, 0, 0, 2)


def test_from_env_binds_no_gpu_for_a_cpu_run_on_a_one_gpu_machine(monkeypatch):
    """The H100 failure: rank 1 of a 2-process gloo run called torch.cuda.set_device(1) on a 1-GPU machine."""
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def set_device(i):
        raise RuntimeError(f"invalid device ordinal {i}")

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(
        distributed.dist, "init_process_group", lambda backend: calls.setdefault("backend", backend)
    )
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    d = Dist.from_env("cpu")
    assert calls["backend"] == "gloo" and (d.rank, d.world, d.local_rank) == (1, 2, 1)
    with pytest.raises(ConfigError, match="local rank 1 has no GPU"):
        Dist.from_env("cuda")  # refused before any set_device / init


# --------------------------------------------------------------------------------------- pre-launch check
def test_gpu_request_check_names_both_counts(monkeypatch):
    monkeypatch.setenv("DWC_FAKE_GPUS", "2")
    check_gpu_request({"device": "cuda", "gpus": 2})
    check_gpu_request({"device": "cpu", "gpus": 8})  # CPU processes need no GPU
    with pytest.raises(ConfigError, match=r"trainer.gpus = 4 .*device = cuda.* shows 2 GPU\(s\)"):
        check_gpu_request({"device": "cuda", "gpus": 4})
    with pytest.raises(ConfigError, match=r"trainer.gpus = 3 .* shows 2 GPU"):
        check_gpu_request({"device": "auto", "gpus": 3})
    monkeypatch.setenv("DWC_FAKE_GPUS", "0")
    check_gpu_request({"device": "auto", "gpus": 2})  # no GPU at all: auto = CPU processes


def test_dwc_run_refuses_more_gpus_than_visible_before_launching(tmp_path):
    write_project(
        tmp_path,
        "experiments:\n  big:\n    dataset: {name: synthetic, num_train: 64, num_test: 16, image_size: 32}\n"
        "    model: {name: tirg, cnn: {arch: tiny}}\n    trainer: {gpus: 4, device: cuda, epochs: 1}\n"
        "    eval: {ks: [1, 5, 10]}\n",
    )
    res = dwc(tmp_path, "run", "big", env={"DWC_FAKE_GPUS": "1"}, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    text = " ".join((res.stdout + res.stderr).split())
    assert "trainer.gpus = 4" in text and "shows 1 GPU(s)" in text and "Traceback" not in text
    db = tmp_path / "runs" / "registry.db"
    if db.exists():  # nothing queued, nothing launched
        from dwc_core.runs.registry import Registry

        assert Registry(db).runs() == []
    assert not list((tmp_path / "runs").glob("*-big")) if (tmp_path / "runs").exists() else True


# ------------------------------------------------------------------------------------------- evaluation
class _Cache:
    def __init__(self, n=37, size=8):
        rng = np.random.default_rng(0)
        self.array = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


class _MeanColour(torch.nn.Module):
    def encode_gallery(self, images):
        assert images.dtype == torch.uint8 and images.shape[1] == 3
        return images.float().mean(dim=(2, 3))


def test_batches_are_gathered_in_order_and_match_per_image_permutes():
    cache = _Cache()
    idx = [5, 0, 36, 7, 7, 12, 3]
    batches = list(image_batches(cache, idx, 3, "cpu"))
    assert [b.shape[0] for b in batches] == [3, 3, 1]
    got = torch.cat(batches)
    want = torch.stack([torch.from_numpy(cache.array[i]).permute(2, 0, 1) for i in idx])
    assert torch.equal(got, want)
    assert all(b.is_contiguous(memory_format=torch.channels_last) for b in batches)  # permuted without a copy


def test_pinned_copies_when_asked(monkeypatch):
    """The CUDA branch pins each gathered batch before its non-blocking copy; reached here with pin=True."""
    pinned = []

    def fake_pin(self):
        pinned.append(tuple(self.shape))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    list(image_batches(_Cache(), list(range(10)), 4, "cpu", pin=True))
    assert pinned == [(4, 8, 8, 3), (4, 8, 8, 3), (2, 8, 8, 3)]  # uint8 NHWC batches: permuted after the copy


def test_encoding_checks_between_batches():
    seen = []

    def check():
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt  # stands in for the trainer's Stop

    with pytest.raises(KeyboardInterrupt):
        encode_images(
            _MeanColour(),
            _Cache(),
            list(range(30)),
            "cpu",
            4,
            lambda: torch.autocast("cpu", enabled=False),
            check,
        )
    assert len(seen) == 2  # stopped at the second batch, not after all eight


def _reference_order(scores: np.ndarray, k: int) -> np.ndarray:
    """Brute force: sort every gallery item by (score desc, position asc)."""
    pos = np.arange(scores.shape[1])
    return np.stack([np.lexsort((pos, -row))[:k] for row in scores])


def test_ties_crossing_the_cutoff_keep_the_lowest_positions():
    g = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 6 + [[0.5, 0.5]] * 4)  # 6 equal rows around rank 5
    q = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    r = rank(q, g, 5)
    assert r.indices[0].tolist() == [3, 4, 5, 6, 7]  # 6 tied scores 1.0, the lowest 5 positions
    assert r.indices[1].tolist() == [0, 1, 2, 9, 10]  # 3 at 1.0, then the 0.5 group from its lowest position


def test_k_as_large_as_the_gallery_and_ties_at_the_last_place():
    """k = the whole gallery (no (k+1)-th score to look at), and a tie group that ends exactly at rank k."""
    g = torch.tensor([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 3)
    q = torch.tensor([[0.0, 1.0]])
    assert rank(q, g, 5).indices[0].tolist() == [2, 3, 4, 0, 1]
    assert rank(q, g, 9).indices[0].tolist() == [2, 3, 4, 0, 1]  # k beyond the gallery: all of it
    assert rank(q, g, 3).indices[0].tolist() == [2, 3, 4]  # the group fills the cut-off exactly
    assert rank(q, g, 4).indices[0].tolist() == [
        2,
        3,
        4,
        0,
    ]  # the next group crosses it: lowest position kept


def test_ranking_is_exact_and_independent_of_chunk_size():
    gen = torch.Generator().manual_seed(3)
    base = torch.nn.functional.normalize(torch.randn(40, 16, generator=gen), dim=1)
    gallery = base[torch.randint(0, 40, (300,), generator=gen)]  # many identical rows: ties everywhere
    n = 2 * SCORE_BLOCK + 150  # several blocks and chunks, the last block partial
    queries = torch.nn.functional.normalize(torch.randn(n, 16, generator=gen), dim=1)
    queries[:15] = gallery[::20]  # queries equal to gallery rows: exact ties at the top
    refs = torch.randint(-1, 300, (n,), generator=gen)
    chunks = (1, 3, SCORE_BLOCK, SCORE_BLOCK + 1, 2 * SCORE_BLOCK, 4096)
    results = [rank(queries, gallery, 50, refs, chunk_size=c) for c in chunks]
    for r in results[1:]:
        assert torch.equal(r.indices, results[0].indices) and torch.equal(r.scores, results[0].scores)
    # and the order is exactly (score desc, position asc) of the scores the ranking itself used
    full = _scores(queries, gallery)
    full[torch.arange(n)[refs >= 0], refs[refs >= 0]] = float("-inf")
    assert np.array_equal(results[0].indices.numpy(), _reference_order(full.numpy(), 50))


# ------------------------------------------------------------------------------------------ checkpoint RNG state
@pytest.mark.parametrize("where", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU: the trainer loads checkpoints onto its device"))])  # fmt: skip
def test_rng_state_restores_after_a_checkpoint_loaded_onto_the_training_device(tmp_path, where):
    """Resume loads last.pt with map_location = the trainer's device; on a GPU that moved the CPU RNG state onto
    the GPU and resume failed with "RNG state must be a torch.ByteTensor" (seen on an H100)."""
    from dwc_core.engine import checkpoint

    torch.manual_seed(3)
    torch.save({"rng": checkpoint.rng_state()}, tmp_path / "s.pt")
    expected = torch.rand(4)
    torch.manual_seed(99)
    state = torch.load(tmp_path / "s.pt", map_location=where, weights_only=False)
    assert state["rng"]["torch"].device.type == where
    checkpoint.set_rng_state(state["rng"])
    assert torch.equal(torch.rand(4), expected)


def test_removed_compile_option_is_refused_with_the_measurement_behind_it(tmp_path):
    root = write_project(tmp_path, "experiments:\n  e:\n    dataset: {name: synthetic}\n    model: {name: tirg}\n"
                         "    trainer:\n      epochs: 1\n      compile: true\n")  # fmt: skip
    res = dwc(root, "queue", "e")
    assert res.returncode == 2, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert (
        "experiments.yaml:7" in out and "trainer.compile" in out and "was removed" in out and "1.07x" in out
    )
    assert "Traceback" not in out and not (root / "runs" / "registry.db").exists()  # nothing queued


# ------------------------------------------------------------------------------------------ optimizer implementation
def _dwc_optimizers(impl: str | None, monkeypatch=None, on_gpu: bool = False):
    from dwc_core.config.experiments import default_config

    model = make_model()
    trainer = default_config(dataset="synthetic", method="dwc")["trainer"]
    if impl is None:
        del trainer["optimizer_impl"]  # a config recorded before the option existed
    else:
        trainer["optimizer_impl"] = impl
    if on_gpu:  # what auto sees on a GPU: parameters on CUDA (faked: CI has no GPU)
        monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
        impl_kwargs = model.optimizer_impl(trainer)
        monkeypatch.undo()
        return impl_kwargs
    return model, model.make_optimizers(trainer)


def test_optimizer_impl_auto_is_fused_on_gpu_and_pytorch_default_on_cpu(monkeypatch):
    assert _dwc_optimizers("auto", monkeypatch, on_gpu=True) == {"fused": True}
    _, opts = _dwc_optimizers("auto")
    assert all(not o.defaults.get("fused") and o.defaults.get("foreach") is None for o in opts.values())
    _, opts = _dwc_optimizers(None)  # old configs: PyTorch's own choice, as they were trained
    assert all(not o.defaults.get("fused") and o.defaults.get("foreach") is None for o in opts.values())
    _, opts = _dwc_optimizers("foreach")
    assert all(o.defaults["foreach"] is True for o in opts.values())


def test_fused_and_loop_adam_take_the_same_steps():
    import contextlib

    from dwc_core.models.base import StepContext

    runs = {}
    for impl in ("loop", "fused"):
        model, opts = _dwc_optimizers(impl)
        assert all(bool(o.defaults.get("fused")) == (impl == "fused") for o in opts.values())
        ctx = StepContext(opts, autocast=contextlib.nullcontext)
        start = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
        for step in range(3):
            torch.manual_seed(step)
            model.train_step(make_batch(), ctx)
        runs[impl] = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    assert runs["loop"].keys() == runs["fused"].keys()
    assert any(not torch.equal(runs["fused"][k], start[k]) for k in start)  # the steps changed weights
    for k in runs["loop"]:
        assert torch.allclose(runs["loop"][k], runs["fused"][k], atol=1e-5, rtol=1e-4), k
