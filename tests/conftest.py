"""Shared pytest set-up."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tests run tiny tensors in-process: more intra-op threads only contend on a small shared machine.
    (Subprocesses started by tests are not affected.)"""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def anyio_backend():
    """The Textual tests run under asyncio only (anyio would otherwise repeat them on every installed backend)."""
    return "asyncio"


@pytest.fixture
def reg(proj):
    """The registry of the module's `proj` fixture, opened for the test and closed after it."""
    from dwc_core.runs.registry import Registry

    r = Registry(proj / "runs" / "registry.db")
    yield r
    r.close()
