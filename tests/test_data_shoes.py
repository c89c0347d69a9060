"""Shoes loader: the papers' pair list (double emission), the eval-list gallery, out-of-list pairs, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from data_fixtures import SHOES_RECORDS, config, write_shoes

from dwc_core.data import load_dataset
from dwc_core.data.shoes import split_pairs
from dwc_core.errors import DataError

C1, C2, C3 = "img_womens_clogs_1.jpg", "img_womens_clogs_2.jpg", "img_womens_clogs_3.jpg"
B11, B12, B13, B14 = (f"img_womens_boots_{k}.jpg" for k in (11, 12, 13, 14))
P99 = "img_womens_pumps_99.jpg"


def load(tmp_path, root, **options):
    return load_dataset(config("shoes", root, **options), tmp_path / "cache")


def named(ds, items):
    return [(ds.images[x.ref].id, x.text, ds.images[x.target].id) for x in items]


def test_pairs_gallery_and_labels(tmp_path):
    ds = load(tmp_path, write_shoes(tmp_path / "shoes"))
    # for each train name in file order, every record touching it: both-in-list records twice
    assert named(ds, ds.train) == [
        (C1, "is darker", C2),  # via C1
        (C1, "is darker", C2),  # via C2
        (C2, "has laces", C3),  # via C2
        (C2, "has laces", C3),  # via C3
        (C3, "is shiny", P99),  # via C3; the target is in no list but exists: kept, as the papers do
    ]
    assert [t.label for t in ds.train] == [t.target for t in ds.train]  # image index of the target
    es = ds.eval_sets["test"]
    assert named(ds, es.queries) == [(B11, "is taller", B12)] * 2 + [(B13, "is red", B14)] * 2
    assert [ds.images[i].id for i in es.gallery] == [B11, B12, B13, B14]
    # (pumps_99 -> boots_13) has a reference outside eval_im_names.txt: skipped and counted, not a crash
    assert es.skipped_queries == 1
    assert "1 queries skipped: an image outside eval_im_names.txt" in es.notes
    assert es.mask_reference is True and es.ks == [1, 10, 50]
    assert es.match["main"] == (es.gallery, [q.target for q in es.queries])
    assert ds.info["queries_outside_eval_list"] == 1
    # unused images on disk (flats_5) are not loaded; displays are paths under the image folder
    assert {r.id for r in ds.images} == {C1, C2, C3, P99, B11, B12, B13, B14}
    rec = next(r for r in ds.images if r.id == B12)
    assert rec.display == f"womens_boots/{len('boots') % 3}/{B12}"


def test_split_pairs_order():
    records = [("a", "b", "x"), ("c", "a", "y"), ("a", "a", "z")]
    assert split_pairs(["a"], records) == records
    assert split_pairs(["b", "a"], records) == [records[0], records[0], records[1], records[2]]


def test_images_under_attributedata(tmp_path):
    ds = load(tmp_path, write_shoes(tmp_path / "shoes", under="attributedata"))
    assert len(ds.train) == 5
    assert all("/attributedata/womens_" in r.path for r in ds.images)


def test_missing_images_error_and_skip(tmp_path):
    root = write_shoes(tmp_path / "shoes", skip_images=(B12,))
    with pytest.raises(DataError) as exc:
        load(tmp_path, root)
    assert "1 of 8 images referenced by the annotations are missing" in str(exc.value)
    assert f"womens_*/*/{B12}" in str(exc.value)
    ds = load(tmp_path, root, missing_images="skip")
    es = ds.eval_sets["test"]
    assert named(ds, es.queries) == [(B13, "is red", B14)] * 2
    assert [ds.images[i].id for i in es.gallery] == [B11, B13, B14]
    assert es.skipped_queries == 3  # 1 outside the eval list + 2 with the missing image
    assert ds.info["missing_images"] == 1


def test_no_images_at_all(tmp_path):
    root = write_shoes(tmp_path / "shoes")
    for folder in root.glob("womens_*"):
        shutil.rmtree(folder)
    with pytest.raises(DataError, match=r"no images found: .*womens_\*/\*/\*\.jpg.*attributedata\.tar\.gz"):
        load(tmp_path, root)


def test_missing_annotation_files(tmp_path):
    root = write_shoes(tmp_path / "shoes")
    (root / "eval_im_names.txt").unlink()
    with pytest.raises(DataError, match=r"missing annotation file .*eval_im_names\.txt"):
        load(tmp_path, root)
    with pytest.raises(DataError, match=r"dataset root .* does not exist"):
        load(tmp_path, tmp_path / "absent")


def test_bad_records(tmp_path):
    root = write_shoes(tmp_path / "shoes")
    path = root / "relative_captions_shoes.json"
    bad = [dict(r) for r in SHOES_RECORDS]
    del bad[3]["ReferenceImageName"]
    path.write_text(json.dumps(bad, indent=1))
    # indent=1 puts one key per line: entry 3 starts after 1 + 3 * 5 lines
    with pytest.raises(
        DataError, match=r"relative_captions_shoes\.json:17: Shoes: entry 3: the key 'ReferenceImageName'"
    ):
        load(tmp_path, root)
    bad = [dict(r) for r in SHOES_RECORDS]
    bad[1]["RelativeCaption"] = ""
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"relative_captions_shoes\.json:1: Shoes: entry 1: empty caption"):
        load(tmp_path, root)
    path.write_text('[{"ImageName": "a.jpg",\n "ReferenceImageName": "b.jpg" "RelativeCaption": "x"}]')
    with pytest.raises(DataError, match=r"relative_captions_shoes\.json:2:\d+: Shoes: malformed JSON"):
        load(tmp_path, root)


def test_keep_pairs_outside_the_eval_list(tmp_path):
    ds = load(tmp_path, write_shoes(tmp_path / "shoes"), outside_eval_list="keep")
    es = ds.eval_sets["test"]
    assert (
        named(ds, es.queries)
        == [(B11, "is taller", B12)] * 2 + [(P99, "has a heel", B13)] + [(B13, "is red", B14)] * 2
    )
    assert [ds.images[i].id for i in es.gallery] == [B11, B12, B13, B14]  # the outside reference is not in it
    assert es.skipped_queries == 0
    assert "1 queries have an image outside eval_im_names.txt (kept" in es.notes
