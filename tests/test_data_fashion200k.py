"""Fashion200k loader: caption clean-up, TIRG queries and texts, caption-match hits, seeded on-the-fly sampling."""

from __future__ import annotations

import random

import pytest
from data_fixtures import config, write_fashion200k

from dwc_core.data import load_dataset
from dwc_core.data.fashion200k import CaptionIndex, clean_caption, different_words
from dwc_core.errors import DataError

D = "women/dresses/casual"
TRAIN = [f"{D}/1/1_0.jpeg", f"{D}/2/2_0.jpeg", f"{D}/3/3_0.jpeg", f"{D}/4/4_0.jpeg"]
TRAIN += ["women/skirts/mini/5/5_0.jpeg", "women/skirts/mini/6/6_0.jpeg"]
TEST = [f"{D}/10/10_0.jpeg", f"{D}/11/11_0.jpeg", f"{D}/12/12_0.jpeg", f"{D}/13/13_0.jpeg"]
# sorted unique training captions → label codes
CODES = {
    "Blue floral dress": 0,
    "black midi skirt": 1,
    "black mini skirt": 2,
    "green maxi skirtdotmark": 3,
    "red floral dress": 4,
}


def load(tmp_path, root, **options):
    return load_dataset(config("fashion200k", root, **options), tmp_path / "cache")


@pytest.fixture
def root(tmp_path):
    return write_fashion200k(tmp_path / "f200k")


def test_images_and_caption_cleanup(tmp_path, root):
    ds = load(tmp_path, root)
    assert [r.id for r in ds.images] == TRAIN + TEST  # label files in name order: dress, then skirt
    assert [r.display for r in ds.images[:6]] == [
        "red floral dress", "Blue floral dress", "red floral dress", "green maxi skirtdotmark",
        "black mini skirt", "black midi skirt",
    ]  # fmt: skip
    assert ds.images[0].path == str(root / TRAIN[0])
    assert clean_caption(" a.b?c&d*e \n") == "adotmarkbquestionmarkcandmarkdstarmarke"
    assert ds.info["modifiable_images"] == 5
    assert ds.num_labels == 5


def test_test_queries_and_caption_match(tmp_path, root):
    ds = load(tmp_path, root)
    es = ds.eval_sets["test"]
    assert [(ds.images[q.ref].id, q.text, ds.images[q.target].id) for q in es.queries] == [
        (TEST[0], "replace white with black", TEST[1]),
        (TEST[3], "replace silk with lace", TEST[0]),
    ]
    assert [ds.images[i].id for i in es.gallery] == TEST
    assert es.mask_reference is True and es.ks == [1, 10, 50]
    # keys = codes of sorted test captions: black lace 0, white lace 1, white silk 2
    g_keys, q_keys = es.match["main"]
    assert g_keys == [1, 0, 0, 2] and q_keys == [0, 1]
    # image 12 has the target's caption but is not the target image: it counts as a hit
    hits = [g_keys[pos] == q_keys[0] for pos in range(4)]
    assert hits == [False, True, True, False]


def test_dwc_text_appends_the_target_caption(tmp_path, root):
    ds = load(tmp_path, root, text="dwc")
    assert [q.text for q in ds.eval_sets["test"].queries] == [
        "replace white with black and get black lace dress",
        "replace silk with lace and get white lace dress",
    ]
    assert all(
        " and get " + ds.images[t.target].display == t.text[t.text.index(" and get ") :] for t in ds.train
    )


def check_triplet(ds, t):
    src, tgt = ds.images[t.ref].id, ds.images[t.target].id
    if src in (TRAIN[0], TRAIN[2]):
        assert (tgt, t.text) == (TRAIN[1], "replace red with Blue")
    elif src == TRAIN[1]:
        assert tgt in (TRAIN[0], TRAIN[2]) and t.text == "replace Blue with red"
    elif src == TRAIN[4]:
        assert (tgt, t.text) == (TRAIN[5], "replace mini with midi")
    else:
        assert (src, tgt, t.text) == (TRAIN[5], TRAIN[4], "replace midi with mini")
    assert t.label == CODES[ds.images[t.target].display]


def test_training_pairs_follow_tirg_sampling(tmp_path, root):
    ds = load(tmp_path, root)
    for epoch in range(6):
        triplets = ds.train_triplets(epoch, seed=11)
        assert len(triplets) == 6  # one per training image
        for t in triplets:
            check_triplet(ds, t)
        # the unmodifiable image (no sibling caption) is never used
        assert TRAIN[3] not in {ds.images[i].id for t in triplets for i in (t.ref, t.target)}


def test_sampling_is_deterministic_and_leaves_global_random_alone(tmp_path, root):
    ds = load(tmp_path, root)
    random.seed(123)
    expected_next = random.random()
    random.seed(123)
    a = ds.sampler(3, 7)
    assert random.random() == expected_next
    again = load(tmp_path, root)
    assert again.sampler(3, 7) == a
    assert len({tuple(ds.sampler(e, 7)) for e in range(8)}) > 1
    assert len({tuple(ds.sampler(3, s)) for s in range(8)}) > 1
    assert ds.train == ds.sampler(0, 0)


def test_word_difference_and_parents():
    assert different_words("red floral dress", "blue floral dress") == ("red", "blue")
    assert different_words("a b c", "a b c") == ("c", "c")  # TIRG's loop leaves the last word
    index = CaptionIndex(["red dress", "blue dress", "red dress", "long coat"])
    assert index.children["dress"] == ["red dress", "blue dress"]
    assert [bool(p) for p in index.parents] == [True, True, True, False]
    # parents come from a plain string replace, as in TIRG: "red" is also removed inside "redwood"
    assert "wood dress" in CaptionIndex(["red redwood dress"]).children


def test_missing_images(tmp_path):
    root = write_fashion200k(tmp_path / "f200k", skip_images=(TEST[1], TRAIN[1]))
    with pytest.raises(
        DataError, match=r"2 of 10 images referenced by the annotations are missing: .*2_0\.jpeg"
    ):
        load(tmp_path, root)
    ds = load(tmp_path, root, missing_images="skip")
    es = ds.eval_sets["test"]
    assert [ds.images[i].id for i in es.gallery] == [TEST[0], TEST[2], TEST[3]]
    assert [ds.images[q.ref].id for q in es.queries] == [TEST[3]]
    assert es.skipped_queries == 1
    # without "Blue floral dress" the red dresses have no sibling: only the skirts are modifiable
    assert ds.info["modifiable_images"] == 2
    assert {ds.images[t.ref].id for t in ds.sampler(0, 1)} <= {TRAIN[4], TRAIN[5]}


def test_query_with_unlisted_image_is_skipped(tmp_path):
    root = write_fashion200k(
        tmp_path / "f200k", extra_queries=[(TEST[0], "women/dresses/casual/99/99_0.jpeg")]
    )
    es = load(tmp_path, root).eval_sets["test"]
    assert len(es.queries) == 2 and es.skipped_queries == 1
    assert "not in labels/*_test_detect_all.txt" in es.notes


def test_malformed_label_line(tmp_path, root):
    path = root / "labels" / "dress_train_detect_all.txt"
    lines = path.read_text().splitlines()
    lines[1] = "women/dresses/casual/2/2_0.jpeg 0.82 no tabs here"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataError, match=r"dress_train_detect_all\.txt:2: Fashion200k: malformed line .*<TAB>"
    ):
        load(tmp_path, root)


def test_empty_caption_line(tmp_path, root):
    path = root / "labels" / "skirt_train_detect_all.txt"
    path.write_text(path.read_text() + "women/skirts/mini/7/7_0.jpeg\t0.5\t  \n")
    with pytest.raises(DataError, match=r"skirt_train_detect_all\.txt:3: Fashion200k: empty caption"):
        load(tmp_path, root)


def test_malformed_query_line(tmp_path, root):
    (root / "test_queries.txt").write_text(f"{TEST[0]} {TEST[1]}\n{TEST[0]}\n")
    with pytest.raises(DataError, match=r"test_queries\.txt:2: Fashion200k: malformed line"):
        load(tmp_path, root)


def test_missing_files(tmp_path, root):
    (root / "test_queries.txt").unlink()
    with pytest.raises(DataError, match=r"missing annotation file .*test_queries\.txt"):
        load(tmp_path, root)
    (root / "labels" / "dress_test_detect_all.txt").unlink()
    with pytest.raises(
        DataError, match=r"no test label files in .*labels \(expected e\.g\. dress_test_detect_all"
    ):
        load(tmp_path, root)
    with pytest.raises(DataError, match=r"label folder .*labels does not exist"):
        load(tmp_path, tmp_path)
