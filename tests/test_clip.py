"""CLIP through open_clip: tiny shipped configs, local weight files, clear errors (no downloads are attempted)."""

from __future__ import annotations

import pytest
import torch

from dwc_core.errors import ConfigError
from dwc_core.models import clip as clip_mod
from dwc_core.models.clip import ClipEncoder, build_clip

TEXTS = ["make it red", "add a blue square " * 20]  # the second one is longer than the context


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny() -> ClipEncoder:
    torch.manual_seed(0)
    return build_clip("tiny", "none").eval()


def test_tiny_vit_shapes(tiny):
    assert tiny.embed_dim == 64 and tiny.image_size == 32 and tiny.context_length == 32
    with torch.no_grad():
        img = tiny.encode_image(images(2, 32))
        txt = tiny.encode_text(TEXTS)
    assert img.shape == (2, 64) and img.dtype == torch.float32
    assert txt.shape == (2, 64) and txt.dtype == torch.float32
    tokens = tiny.tokenize(TEXTS)
    assert tokens.shape == (2, 32)
    assert int(tokens[1, -1]) != 0  # truncated: the last slot holds the end token, not padding
    assert int(tokens[0, -1]) == 0


def test_other_input_sizes_are_resized(tiny):
    with torch.no_grad():
        out = tiny.encode_image(images(2, 48))
    assert out.shape == (2, 64) and torch.isfinite(out).all()


def test_tiny_resnet_builds():
    enc = build_clip("tiny-rn", None).eval()
    assert enc.embed_dim == 64 and enc.image_size == 64
    with torch.no_grad():
        assert enc.encode_image(images(2, 64)).shape == (2, 64)
        assert enc.encode_text(TEXTS).shape == (2, 64)


def test_shipped_configs_are_listed():
    assert {"tiny", "tiny-rn"} <= set(clip_mod.LOCAL_ARCHS)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_round_trip(tmp_path, tiny, suffix):
    path = tmp_path / f"clip{suffix}"
    state = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(123)  # a different random init that the file must overwrite
    loaded = build_clip("tiny", str(path)).eval()
    assert loaded.pretrained == str(path)
    x = images(3, 32, seed=1)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), tiny.encode_image(x))
        assert torch.equal(loaded.encode_text(TEXTS), tiny.encode_text(TEXTS))


def test_local_checkpoint_wrapped_in_state_dict_key(tmp_path, tiny):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": tiny.model.state_dict(), "epoch": 3}, path)
    loaded = build_clip("tiny", str(path)).eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(TEXTS), tiny.encode_text(TEXTS))


def test_checkpoint_of_another_architecture_is_a_config_error(tmp_path, tiny):
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    with pytest.raises(ConfigError, match="does not match"):
        build_clip("tiny-rn", str(path))


def test_unreadable_file_is_a_config_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a loadable weights file"):
        build_clip("tiny", str(path))


def test_missing_file_and_unknown_tag():
    with pytest.raises(ConfigError, match="no such file"):
        build_clip("tiny", "/does/not/exist.pt")
    with pytest.raises(ConfigError, match="openai"):  # lists RN50's known tags
        build_clip("RN50", "laion-something")


def test_unknown_architecture():
    with pytest.raises(ConfigError, match="not an open_clip architecture"):
        build_clip("RN51", "none")


def test_failed_download_names_the_local_file_option(monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise RuntimeError("Failed to download weights for tag 'openai': Name or service not known")
        raise AssertionError("the tag path must ask open_clip for the weights")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(ConfigError) as info:
        build_clip("RN50", "openai")
    msg = str(info.value)
    assert "download" in msg and "offline" in msg and "model.clip.pretrained: /path/to/file" in msg


def test_real_architectures_build_without_weights():
    enc = build_clip("RN50", "none")
    assert enc.embed_dim == 1024 and enc.image_size == 224 and enc.context_length == 77
    enc = build_clip("ViT-B/32", None)  # OpenAI spelling is accepted
    assert enc.arch == "ViT-B-32" and enc.embed_dim == 512
