"""CSS3D loader: npy + PNG layout, label-match hits, TIRG pair sampling, optional 2D rendering, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import config, css_data, write_css3d

from dwc_core.data import load_dataset
from dwc_core.errors import DataError

NPY = "css_toy_dataset_novel2_small.dup.npy"
VALID_TRAIN = {
    (0, "add blue circle", 1),
    (2, "add blue circle", 1),
    (0, "remove everything", 3),
    (1, "remove everything", 3),
}


def load(tmp_path, root, **options):
    return load_dataset(config("css3d", root, **options), tmp_path / "cache")


def test_images_and_queries(tmp_path):
    root = write_css3d(tmp_path / "css")
    ds = load(tmp_path, root)
    assert [r.id for r in ds.images] == [f"css_train_{i:06d}" for i in range(4)] + [
        f"css_test_{i:06d}" for i in range(4)
    ]
    assert ds.images[5].path == str(root / "images" / "css_test_000001.png")
    assert ds.images[1].display == "large red rectangle at (0.30, 0.30); small blue circle at (0.70, 0.70)"
    assert ds.images[3].display == "empty scene"
    es = ds.eval_sets["test"]
    # every (from, to) pair of every test mod, text = to_str
    assert [(q.ref, q.text, q.target) for q in es.queries] == [
        (4, "make it large", 5),
        (7, "make it large", 4),
    ]
    assert es.gallery == [4, 5, 6, 7]
    assert es.mask_reference is True and es.ks == [1, 5, 10, 50]


def test_label_match_hits(tmp_path):
    ds = load(tmp_path, write_css3d(tmp_path / "css"))
    g_keys, q_keys = ds.eval_sets["test"].match["main"]
    # test labels [0, 1, 1, 2]: images 1 and 2 show the same scene
    assert g_keys == [0, 1, 1, 2] and q_keys == [1, 0]
    # query 0 targets test image 1; test image 2 (same label) is a hit too, test image 3 is not
    assert [g == q_keys[0] for g in g_keys] == [False, True, True, False]


def test_training_sampling(tmp_path):
    ds = load(tmp_path, write_css3d(tmp_path / "css"))
    assert ds.num_labels == 4  # no train labels: each image its own label
    for epoch in range(5):
        triplets = ds.train_triplets(epoch, 3)
        assert len(triplets) == 4  # one per training image
        assert {(t.ref, t.text, t.target) for t in triplets} <= VALID_TRAIN
        assert all(t.label == t.target for t in triplets)
        # a first query from image 0 (the only source with two mods) is followed by a second one from image 0
        # under the other mod; sources 1 and 2 have one mod each, so the next query is a new first one
        i = 0
        while i < len(triplets):
            first = triplets[i]
            if first.ref == 0 and i + 1 < len(triplets):
                assert triplets[i + 1].ref == 0 and triplets[i + 1].text != first.text
                i += 1
            i += 1
    assert ds.sampler(2, 9) == load(tmp_path, write_css3d(tmp_path / "css2")).sampler(2, 9)
    assert len({tuple(ds.sampler(e, 9)) for e in range(8)}) > 1


def test_render_2d_needs_no_png(tmp_path):
    from dwc_core.data.loading import ImageCache

    root = write_css3d(tmp_path / "css", images=False)
    with pytest.raises(DataError, match="8 of 8 images"):
        load(tmp_path, root)
    ds = load(tmp_path, root, render_2d=True)
    assert all(r.path is None for r in ds.images)
    img = ds.render(0)  # train 0: a large red square centred at (19.2, 19.2)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert tuple(img[19, 19]) == (244, 35, 35)
    assert tuple(img[2, 2]) == (255, 255, 255)
    assert tuple(ds.render(4)[16, 48]) == (255, 238, 51)  # test 0: a small yellow "circle" at (16, 48)
    assert tuple(ds.render(2)[31, 32]) == (29, 205, 20)  # train 2: green triangle
    assert ds.cache_key.startswith("css3d-2d-")
    cache = ImageCache(ds, 32, tmp_path / "cache")
    cache.ensure(threads=1)
    assert cache.array.shape == (8, 32, 32, 3)


def test_missing_pngs(tmp_path):
    root = write_css3d(tmp_path / "css", skip_images=("css_test_000001.png", "css_train_000001.png"))
    with pytest.raises(DataError, match=r"2 of 8 images .*images/css_train_000001\.png.*render_2d: true"):
        load(tmp_path, root)
    ds = load(tmp_path, root, missing_images="skip")
    es = ds.eval_sets["test"]
    assert [(ds.images[q.ref].id, ds.images[q.target].id) for q in es.queries] == [
        ("css_test_000003", "css_test_000000")
    ]
    assert es.skipped_queries == 1
    assert len(es.gallery) == 3
    # train pairs touching css_train_000001 are gone: only (0 -> 3, remove everything) remains
    assert {(ds.images[t.ref].id, t.text, ds.images[t.target].id) for t in ds.sampler(0, 1)} == {
        ("css_train_000000", "remove everything", "css_train_000003")
    }
    assert ds.info["skipped_triplets"] == 3


def test_bad_npy(tmp_path):
    root = tmp_path / "css"
    root.mkdir()
    with pytest.raises(DataError, match=rf"missing annotation file .*{NPY}"):
        load(tmp_path, root)
    (root / NPY).write_bytes(b"garbage, not numpy")
    with pytest.raises(DataError, match=rf"{NPY}: CSS3D: not a readable pickled npy file"):
        load(tmp_path, root)
    np.save(root / NPY, np.arange(3))
    with pytest.raises(DataError, match="expected a dict keyed by split"):
        load(tmp_path, root)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("test"), r"split 'test' is missing"),
        (
            lambda d: d["train"]["mods"][1].update({"to": [3, 9]}),
            r"split 'train': mod 1: image id 9 is outside 0\.\.3",
        ),
        (
            lambda d: d["test"]["mods"][0].update({"to_str": " "}),
            r"split 'test': mod 0: empty or missing to_str",
        ),
        (
            lambda d: d["train"]["mods"][0].update({"to": [1]}),
            r"mod 0: expected 'from' and 'to' lists of the same",
        ),
        (lambda d: d["test"].update({"labels": [0, 1]}), r"2 labels for 4 images"),
    ],
)
def test_malformed_npy_content(tmp_path, change, message):
    data = css_data()
    change(data)
    root = write_css3d(tmp_path / "css", data=data, images=False)
    with pytest.raises(DataError, match=message):
        load(tmp_path, root, render_2d=True)
