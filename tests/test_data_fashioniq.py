"""FashionIQ loader: triplets, texts, labels, galleries and masking under every protocol option; bad input."""

from __future__ import annotations

import json

import pytest
from data_fixtures import config, write_fashioniq

from dwc_core.data import load_dataset
from dwc_core.data.fashioniq import query_texts
from dwc_core.errors import DataError


def load(tmp_path, root, **options):
    return load_dataset(config("fashioniq", root, **options), tmp_path / "cache")


def triplets(ds):
    return [(ds.images[t.ref].id, t.text, ds.images[t.target].id, t.label) for t in ds.train]


def queries(ds, name):
    return [(ds.images[q.ref].id, q.text, ds.images[q.target].id) for q in ds.eval_sets[name].queries]


def gallery(ds, name):
    return [ds.images[i].id for i in ds.eval_sets[name].gallery]


@pytest.fixture
def dress(tmp_path):
    return write_fashioniq(tmp_path / "fiq", categories=("dress",))


def test_dwc_protocol(tmp_path, dress):
    ds = load(tmp_path, dress)
    # labels = index of the target in split.dress.train.json = [d05, d04, d01, d02, d03]
    assert triplets(ds) == [
        ("d01", "<BOS> is red <AND> has sleeves. <EOS>", "d02", 3),
        ("d03", "<BOS> is longer <AND> is blue <EOS>", "d01", 2),
        ("d02", "<BOS> darker <AND> shorter <EOS>", "d04", 1),
    ]
    assert ds.num_labels == 5
    assert list(ds.eval_sets) == ["dress"]
    assert queries(ds, "dress") == [
        ("d10", "<BOS> is green <AND> no collar <EOS>", "d11"),
        ("d12", "<BOS> is Striped. <AND> has a bow <EOS>", "d10"),
        ("d11", "<BOS> more fitted <AND> is shorter? <EOS>", "d13"),
    ]
    es = ds.eval_sets["dress"]
    # VAL union: reference then target of each query, first occurrence kept
    assert gallery(ds, "dress") == ["d10", "d11", "d12", "d13"]
    assert es.mask_reference is True
    assert es.ks == [10, 50]
    assert es.skipped_queries == 0
    # exact-id hits: keys are image indices
    assert es.match["main"] == (es.gallery, [q.target for q in es.queries])
    # only referenced images are loaded; display = asin; DWC layout all_imgs/<asin>.png
    assert sorted(r.id for r in ds.images) == ["d01", "d02", "d03", "d04", "d10", "d11", "d12", "d13"]
    assert all(r.display == r.id and r.path.endswith(f"all_imgs/{r.id}.png") for r in ds.images)
    assert ds.info["protocol"] == {
        "protocol": "dwc",
        "gallery": "val_union",
        "mask_reference": True,
        "text": "dwc",
    }


def test_clip4cir_protocol(tmp_path, dress):
    ds = load(tmp_path, dress, protocol="clip4cir")
    assert [t[1] for t in triplets(ds)] == [
        "Is red and has sleeves",
        "Is longer and is blue",
        "Darker and shorter",
    ]
    assert [q[1] for q in queries(ds, "dress")] == [
        "Is green and no collar",
        "Is striped and has a bow",
        "More fitted and is shorter",
    ]
    # the whole split.dress.val.json, in file order; the reference stays in the ranking
    assert gallery(ds, "dress") == ["d14", "d10", "d11", "d12", "d13", "d15"]
    assert ds.eval_sets["dress"].mask_reference is False


def test_per_caption_text(tmp_path, dress):
    ds = load(tmp_path, dress, text="per_caption")
    assert triplets(ds) == [
        ("d01", "is red", "d02", 3),
        ("d01", "has sleeves.", "d02", 3),
        ("d03", "is longer", "d01", 2),
        ("d03", "is blue", "d01", 2),
        ("d02", "darker", "d04", 1),
        ("d02", "shorter", "d04", 1),
    ]
    assert queries(ds, "dress")[:2] == [("d10", "is green", "d11"), ("d10", "no collar", "d11")]
    assert len(queries(ds, "dress")) == 6
    assert gallery(ds, "dress") == ["d10", "d11", "d12", "d13"]


def test_explicit_options_override_the_preset(tmp_path, dress):
    ds = load(tmp_path, dress, protocol="dwc", gallery="split_all", mask_reference=False)
    es = ds.eval_sets["dress"]
    assert gallery(ds, "dress") == ["d14", "d10", "d11", "d12", "d13", "d15"]
    assert es.mask_reference is False
    assert queries(ds, "dress")[0][1] == "<BOS> is green <AND> no collar <EOS>"


def test_query_texts_directly():
    assert query_texts(["a b.", "c, d?"], "dwc") == ["<BOS> a b. <AND> c, d? <EOS>"]
    assert query_texts(["a B.", "c, D?"], "joined") == ["A b and c, D"]
    assert query_texts(["x", "y"], "per_caption") == ["x", "y"]


def test_category_all(tmp_path):
    root = write_fashioniq(tmp_path / "fiq")
    ds = load(tmp_path, root, category="all")
    assert list(ds.eval_sets) == ["dress", "shirt", "toptee"]
    # one label space: split offsets 0 / 5 / 10
    assert [t.label for t in ds.train] == [3, 2, 1, 8, 7, 6, 13, 12, 11]
    assert ds.num_labels == 15
    assert [t[0] for t in triplets(ds)] == ["d01", "d03", "d02", "s01", "s03", "s02", "t01", "t03", "t02"]
    for cat, p in (("dress", "d"), ("shirt", "s"), ("toptee", "t")):
        assert gallery(ds, cat) == [f"{p}10", f"{p}11", f"{p}12", f"{p}13"]
        assert [q[0] for q in queries(ds, cat)] == [f"{p}10", f"{p}12", f"{p}11"]
        assert ds.info["splits"][cat] == {"train_samples": 3, "missing_images": 0, "skipped_triplets": 0}


def test_image_folder_and_extension(tmp_path):
    root = write_fashioniq(tmp_path / "fiq", categories=("shirt",), image_dir="images", ext="jpg")
    ds = load(tmp_path, root, category="shirt", image_dir="images", image_ext="jpg")
    assert all(r.path.endswith(f"images/{r.id}.jpg") for r in ds.images)
    with pytest.raises(DataError, match=r"image folder .*all_imgs does not exist.*dataset.image_dir"):
        load(tmp_path, root, category="shirt")
    with pytest.raises(DataError, match=r"no \.png files but 11 \.jpg files: set dataset.image_ext: jpg"):
        load(tmp_path, root, category="shirt", image_dir="images")


def test_target_missing_from_train_split_gets_a_fresh_label(tmp_path, dress):
    (dress / "image_splits" / "split.dress.train.json").write_text(json.dumps(["d05", "d04", "d01", "d03"]))
    ds = load(tmp_path, dress)
    assert [t.label for t in ds.train] == [4, 2, 1]
    assert ds.num_labels == 5
    assert ds.info["train_targets_outside_split"] == 1


# ----------------------------------------------------------------------------------------------- missing images
def test_missing_images_error_lists_count_and_paths(tmp_path):
    root = write_fashioniq(tmp_path / "fiq", categories=("dress",), skip_images=("d02", "d11"))
    with pytest.raises(DataError) as exc:
        load(tmp_path, root)
    msg = str(exc.value)
    assert "2 of 8 images referenced by the annotations are missing" in msg
    assert "all_imgs/d02.png" in msg and "all_imgs/d11.png" in msg
    assert "dataset.missing_images: skip" in msg


def test_missing_images_skip_drops_and_counts(tmp_path):
    root = write_fashioniq(tmp_path / "fiq", categories=("dress",), skip_images=("d02", "d11"))
    ds = load(tmp_path, root, missing_images="skip")
    assert triplets(ds) == [("d03", "<BOS> is longer <AND> is blue <EOS>", "d01", 2)]
    assert queries(ds, "dress") == [("d12", "<BOS> is Striped. <AND> has a bow <EOS>", "d10")]
    assert gallery(ds, "dress") == ["d12", "d10"]
    assert ds.eval_sets["dress"].skipped_queries == 2
    assert "2 queries skipped: missing images" in ds.eval_sets["dress"].notes
    assert ds.info["missing_images"] == 2
    assert ds.info["skipped_triplets"] == 2
    assert ds.info["splits"]["dress"]["missing_images"] == 2
    assert "d02" not in {r.id for r in ds.images}


def test_missing_gallery_only_image_under_split_all(tmp_path):
    root = write_fashioniq(tmp_path / "fiq", categories=("dress",), skip_images=("d14",))
    with pytest.raises(DataError, match="1 of 10 images"):
        load(tmp_path, root, gallery="split_all")
    ds = load(tmp_path, root, gallery="split_all", missing_images="skip")
    assert gallery(ds, "dress") == ["d10", "d11", "d12", "d13", "d15"]
    assert ds.eval_sets["dress"].skipped_queries == 0
    # val_union does not need d14 at all
    assert load(tmp_path, root).info["missing_images"] == 0


def test_per_caption_skip_counts_each_caption(tmp_path):
    root = write_fashioniq(tmp_path / "fiq", categories=("dress",), skip_images=("d11",))
    ds = load(tmp_path, root, text="per_caption", missing_images="skip")
    assert ds.eval_sets["dress"].skipped_queries == 4
    assert len(ds.eval_sets["dress"].queries) == 2


# ---------------------------------------------------------------------------------------------------- bad input
def test_root_not_set_or_missing(tmp_path):
    with pytest.raises(DataError, match="dataset.root is not set"):
        load(tmp_path, None)
    with pytest.raises(DataError, match=r"dataset root .*nowhere does not exist"):
        load(tmp_path, tmp_path / "nowhere")


def test_missing_annotation_file(tmp_path, dress):
    (dress / "captions" / "cap.dress.val.json").unlink()
    with pytest.raises(DataError, match=r"missing annotation file .*cap\.dress\.val\.json"):
        load(tmp_path, dress)
    with pytest.raises(DataError, match=r"missing annotation file .*cap\.shirt\.train\.json"):
        load(tmp_path, dress, category="shirt")


def test_malformed_json_names_file_and_line(tmp_path, dress):
    path = dress / "captions" / "cap.dress.train.json"
    path.write_text('[\n  {"candidate": "d01",\n   "target": }\n]\n')
    with pytest.raises(DataError, match=r"cap\.dress\.train\.json:3:\d+: FashionIQ: malformed JSON"):
        load(tmp_path, dress)


def test_bad_entry_names_file_line_and_entry(tmp_path, dress):
    path = dress / "captions" / "cap.dress.train.json"
    path.write_text(
        '[\n{"candidate": "d01", "target": "d02", "captions": ["a", "b"]},\n\n{"candidate": "d03", "target": "d01"}\n]'
    )
    with pytest.raises(
        DataError, match=r"cap\.dress\.train\.json:4: FashionIQ: entry 1: the key 'captions' is missing"
    ):
        load(tmp_path, dress)
    path.write_text('[{"candidate": "d01", "target": "d02", "captions": ["a"]}]')
    with pytest.raises(DataError, match=r"entry 0: 'captions' must be a list of two strings"):
        load(tmp_path, dress)
    path.write_text('{"candidate": "d01"}')
    with pytest.raises(DataError, match="expected a JSON list"):
        load(tmp_path, dress)


def test_empty_caption(tmp_path, dress):
    path = dress / "captions" / "cap.dress.val.json"
    entries = json.loads(path.read_text())
    entries[2]["captions"][1] = "   "
    path.write_text(json.dumps(entries, indent=1))
    with pytest.raises(DataError, match=r"cap\.dress\.val\.json:\d+: FashionIQ: entry 2: empty caption"):
        load(tmp_path, dress)


def test_corrupt_image_is_named_when_decoded(tmp_path, dress):
    from dwc_core.data.loading import ImageCache

    (dress / "all_imgs" / "d03.png").write_bytes(b"not a png at all")
    ds = load(tmp_path, dress)
    with pytest.raises(DataError, match=r"all_imgs/d03\.png: unreadable or corrupt image file"):
        ImageCache(ds, 16, tmp_path / "cache").ensure(threads=1)
