"""MIT-States loader: TIRG's noun split, adjective text, exact / adjective / noun hit rules, sampling."""

from __future__ import annotations

import shutil

import pytest
from data_fixtures import config, write_mitstates

from dwc_core.data import load_dataset
from dwc_core.data.mitstates import TEST_NOUNS
from dwc_core.errors import DataError

TRAIN = [
    "big dog/0.jpg",
    "green apple/0.jpg",
    "red apple/0.jpg",
    "red apple/1.jpg",
    "sliced apple/0.jpg",
    "small dog/0.jpg",
]
TEST = [
    "new wheel/0.jpg",
    "old persimmon/0.jpg",
    "old wheel/0.jpg",
    "ripe persimmon/0.jpg",
    "ripe persimmon/1.jpg",
]
TEST += ["unripe persimmon/0.jpg"]
TRAIN_CODES = {"big dog": 0, "green apple": 1, "red apple": 2, "sliced apple": 3, "small dog": 4}


def load(tmp_path, root):
    return load_dataset(config("mitstates", root), tmp_path / "cache")


@pytest.fixture
def ds(tmp_path):
    return load(tmp_path, write_mitstates(tmp_path / "mit"))


def test_split_by_tirg_test_nouns(ds):
    assert len(TEST_NOUNS) == 49 and {"persimmon", "wheel"} <= TEST_NOUNS and "apple" not in TEST_NOUNS
    assert [r.id for r in ds.images] == [f"images/{p}" for p in TRAIN + TEST]
    assert [r.display for r in ds.images[:3]] == ["big dog", "green apple", "red apple"]
    # "adj apple" (unlabelled), "misc" (not two words) and the .txt file are left out
    assert (ds.info["unlabelled_folders"], ds.info["other_folders"], ds.info["other_files"]) == (1, 1, 1)
    assert ds.num_labels == 5


def test_queries_one_per_other_adjective(ds):
    es = ds.eval_sets["test"]
    n = len(TRAIN)
    got = [(q.ref - n, q.text, q.target - n) for q in es.queries]
    assert got == [
        (0, "old", 2),  # new wheel -> old wheel
        (1, "ripe", 3), (1, "unripe", 5),  # old persimmon; the target is the first image of that caption
        (2, "new", 0),
        (3, "old", 1), (3, "unripe", 5),
        (4, "old", 1), (4, "unripe", 5),
        (5, "old", 1), (5, "ripe", 3),
    ]  # fmt: skip
    assert es.gallery == list(range(n, n + 6))
    assert es.mask_reference is True and es.ks == [1, 5, 10]


def test_three_hit_rules(ds):
    match = ds.eval_sets["test"].match
    assert list(match) == ["main", "adj", "noun"]
    # captions: new wheel 0, old persimmon 1, old wheel 2, ripe persimmon 3, unripe persimmon 4
    assert match["main"] == ([0, 1, 2, 3, 3, 4], [2, 3, 4, 0, 1, 4, 1, 4, 1, 3])
    # adjectives: new 0, old 1, ripe 2, unripe 3
    assert match["adj"] == ([0, 1, 1, 2, 2, 3], [1, 2, 3, 0, 1, 3, 1, 3, 1, 2])
    # nouns: persimmon 0, wheel 1
    assert match["noun"] == ([1, 0, 1, 0, 0, 0], [1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    # query 0 (new wheel + "old"): old persimmon is an adjective hit but not an exact one
    g_main, q_main = match["main"]
    g_adj, q_adj = match["adj"]
    assert g_adj[1] == q_adj[0] and g_main[1] != q_main[0]
    # query 4 (ripe persimmon/0 + "old"): every persimmon is a noun hit (the reference itself is masked)
    g_noun, q_noun = match["noun"]
    assert [g == q_noun[4] for g in g_noun] == [False, True, False, True, True, True]


def test_training_pairs(ds):
    for epoch in range(4):
        triplets = ds.train_triplets(epoch, 5)
        assert len(triplets) == len(TRAIN)
        for a, b in zip(triplets[::2], triplets[1::2], strict=True):
            assert a.ref == b.ref  # two targets per source
            assert a.text != b.text  # with different adjectives
        for t in triplets:
            src_adj, src_noun = ds.images[t.ref].display.split()
            tgt_adj, tgt_noun = ds.images[t.target].display.split()
            assert tgt_noun == src_noun and t.text == tgt_adj
            assert t.label == TRAIN_CODES[ds.images[t.target].display]
            assert t.ref < len(TRAIN) and t.target < len(TRAIN)
    assert ds.sampler(1, 2) == ds.sampler(1, 2)
    assert len({tuple(ds.sampler(e, 2)) for e in range(8)}) > 1


def test_bad_layout(tmp_path):
    with pytest.raises(DataError, match=r"image folder .*images does not exist.*images/<adj noun>/\*\.jpg"):
        load(tmp_path, tmp_path)
    root = write_mitstates(tmp_path / "mit")
    for folder in (root / "images").iterdir():
        if folder.name not in ("adj apple", "misc"):
            shutil.rmtree(folder)
    with pytest.raises(DataError, match="no images found under"):
        load(tmp_path, root)
