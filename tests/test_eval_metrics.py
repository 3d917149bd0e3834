"""Metrics of the evaluation protocol: confusion, Hungarian matching, FP counting, background merge."""

import numpy as np
import pytest

from diffcut_engine import InputError
from diffcut_engine.eval.metrics import Scorer, confusion_matrix, match_clusters, merge_background, score_image

from eval_fixtures import OfficialAccumulator, official_merge


def test_confusion_matrix_by_hand():
    pred = np.array([[0, 1], [1, 2]])
    gt = np.array([[0, 0], [1, -1]])
    hist = confusion_matrix(pred, gt, 2)
    # 2 classes, 3 clusters -> 3 columns; the ignored pixel (cluster 2) is not counted
    np.testing.assert_array_equal(hist, [[1, 1, 0], [0, 1, 0]])
    # fewer clusters than classes: padded to num_classes columns
    assert confusion_matrix(np.zeros((2, 2), int), np.array([[0, 1], [2, 2]]), 4).shape == (4, 4)


def test_more_clusters_than_classes():
    gt = np.array([[0, 0, 0, 0], [1, 1, 1, 1]])
    pred = np.array([[0, 0, 0, 1], [2, 2, 2, 3]])
    s = score_image(pred, gt, 2)
    np.testing.assert_array_equal(s.matched, [0, 2])
    np.testing.assert_array_equal(s.tp, [3, 3])
    np.testing.assert_array_equal(s.fn, [1, 1])
    # clusters 1 and 3 are matched to nothing: their pixels are FN of their class, FP of none
    np.testing.assert_array_equal(s.fp, [0, 0])
    sc = Scorer(2)
    sc.update(pred, gt)
    m = sc.compute()
    assert m["miou"] == pytest.approx(0.75) and m["pixel_accuracy"] == pytest.approx(0.75)
    np.testing.assert_allclose(m["per_class_iou"], [0.75, 0.75])


def test_fewer_clusters_than_classes():
    gt = np.array([0, 0, 0, 1, 2, 2])
    pred = np.array([0, 0, 0, 0, 1, 1])
    s = score_image(pred, gt, 3)
    # class 1 has to take the empty padding column 2
    np.testing.assert_array_equal(s.matched, [0, 2, 1])
    np.testing.assert_array_equal(s.tp, [3, 0, 2])
    np.testing.assert_array_equal(s.fp, [1, 0, 0])
    np.testing.assert_array_equal(s.fn, [0, 1, 0])
    sc = Scorer(3)
    sc.update(pred, gt)
    m = sc.compute()
    assert m["miou"] == pytest.approx((3 / 4 + 0 + 1) / 3)
    assert m["pixel_accuracy"] == pytest.approx(5 / 6)


def test_official_fp_counting_charges_absent_classes():
    # Only class 0 is present; the official matching still gives classes 1 and 2 the two leftover clusters and
    # counts their pixels as false positives of those absent classes.
    gt = np.zeros((2, 2), int)
    pred = np.array([[0, 0], [1, 2]])
    official = Scorer(3)
    official.update(pred, gt)
    m = official.compute()
    np.testing.assert_array_equal(m["fp"], [0, 1, 1])
    np.testing.assert_allclose(m["per_class_iou"], [0.5, 0.0, 0.0])
    assert m["miou"] == pytest.approx(1 / 6)

    clean = Scorer(3, fp_counting="present")
    clean.update(pred, gt)
    c = clean.compute()
    np.testing.assert_array_equal(c["fp"], [0, 0, 0])
    assert np.isnan(c["per_class_iou"][1:]).all()
    assert c["miou"] == pytest.approx(0.5)
    assert c["pixel_accuracy"] == m["pixel_accuracy"] == pytest.approx(0.5)
    np.testing.assert_array_equal(match_clusters(np.array([[2, 1, 1], [0, 0, 0], [0, 0, 0]]),
                                                 fp_counting="present"), [0, -1, -1])


def test_ignore_label_and_all_ignore_image():
    gt = np.array([[0, -1], [1, -1]])
    a = Scorer(2)
    a.update(np.array([[0, 5], [1, 7]]), gt)
    b = Scorer(2)
    b.update(np.array([[0, 1], [1, 0]]), gt)  # what is predicted on ignored pixels does not matter
    assert a.compute()["miou"] == b.compute()["miou"] == 1.0
    assert a.total == 2
    # an image with no labelled pixel adds nothing
    empty = Scorer(2)
    s = empty.update(np.array([[0, 1], [2, 3]]), np.full((2, 2), -1))
    assert s.total == 0 and not s.tp.any() and not s.fp.any() and not s.fn.any()
    assert np.isnan(empty.compute()["miou"]) and np.isnan(empty.compute()["pixel_accuracy"])
    a.update(np.array([[0, 1], [2, 3]]), np.full((2, 2), -1))
    np.testing.assert_array_equal(a.compute()["per_class_iou"], b.compute()["per_class_iou"])
    assert a.num_images == 2


def test_iou_accumulates_over_the_dataset_not_per_image():
    sc = Scorer(2)
    sc.update(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]))          # perfect
    sc.update(np.array([0, 0, 0, 0]), np.array([0, 1, 1, 1]))          # one cluster: it goes to class 1
    m = sc.compute()
    # image 2: class 1 takes cluster 0 (3 TP, 1 FP); class 0 takes the empty padding column (1 FN)
    np.testing.assert_array_equal(m["tp"], [2, 5])
    np.testing.assert_array_equal(m["fp"], [0, 1])
    np.testing.assert_array_equal(m["fn"], [1, 0])
    assert m["miou"] == pytest.approx((2 / 3 + 5 / 6) / 2)
    # the mean of per-image mIoUs would be (1 + (0 + 3 / 4) / 2) / 2
    assert m["miou"] != pytest.approx((1 + 3 / 8) / 2)
    assert m["pixel_accuracy"] == pytest.approx(7 / 8)


def test_absent_class_is_left_out_of_the_mean():
    sc = Scorer(3)
    sc.update(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]))
    m = sc.compute()
    assert np.isnan(m["per_class_iou"][2]) and m["miou"] == 1.0


def test_background_merge_by_hand():
    gt = np.array([[0, 0, -1, -1], [1, 1, -1, -1]])
    pred = np.array([[0, 0, 1, 1], [2, 2, 3, 3]])
    merged, filled = merge_background(pred, gt, 3)
    np.testing.assert_array_equal(merged, [[0, 0, 4, 4], [2, 2, 4, 4]])
    np.testing.assert_array_equal(filled, [[0, 0, 2, 2], [1, 1, 2, 2]])
    with_merge = Scorer(3, background_merge=True)
    with_merge.update(pred, gt)
    assert with_merge.compute()["miou"] == 1.0
    # one-to-one matching without the merge: background can take only one of its two clusters
    without = Scorer(3)
    without.update(pred, filled)
    assert without.compute()["miou"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_background_merge_keeps_clusters_of_present_classes_only():
    # class 1 is absent; cluster 2 (a leftover) must not survive as a separate cluster
    gt = np.array([0, 0, 0, -1, -1, -1])
    pred = np.array([0, 0, 0, 1, 2, 2])
    merged, filled = merge_background(pred, gt, 3)
    np.testing.assert_array_equal(merged, [0, 0, 0, 3, 3, 3])
    np.testing.assert_array_equal(filled, [0, 0, 0, 2, 2, 2])
    with pytest.raises(InputError, match="background class"):
        merge_background(pred, np.array([0, 0, 2, 2, -1, -1]), 3)


@pytest.mark.parametrize("merge", [False, True])
def test_matches_the_official_code_on_random_images(merge):
    rng = np.random.default_rng(1 if merge else 2)
    n = 6
    ours = Scorer(n, background_merge=merge)
    ref = OfficialAccumulator(n, merge)
    for _ in range(60):
        k = int(rng.integers(1, 10))
        size = int(rng.integers(3, 12))
        pred = rng.integers(0, k, (size, size))
        n_gt = n - 1 if merge else n
        present = rng.choice(n_gt, size=int(rng.integers(1, n_gt + 1)), replace=False)
        gt = rng.choice(np.append(present, -1), size=(size, size))
        # blocky structure so that matchings are not all ties
        pred[: size // 2] = np.where(gt[: size // 2] >= 0, gt[: size // 2] % k, pred[: size // 2])
        ours.update(pred, gt)
        ref.add(pred, gt)
        if merge:
            m1, g1 = merge_background(pred, gt, n)
            m2, g2 = official_merge(pred[None], gt[None], n)
            np.testing.assert_array_equal(m1, m2[0])
            np.testing.assert_array_equal(g1, g2[0])
    m = ours.compute()
    np.testing.assert_array_equal(m["tp"], ref.tp)
    np.testing.assert_array_equal(m["fp"], ref.fp)
    np.testing.assert_array_equal(m["fn"], ref.fn)
    assert m["miou"] == pytest.approx(ref.miou(), abs=1e-12)
    assert m["pixel_accuracy"] == pytest.approx(ref.accuracy(), abs=1e-12)
    assert 0 <= m["miou"] <= 1 and 0 <= m["pixel_accuracy"] <= 1


def test_class_confusion_uses_the_matching():
    gt = np.array([[0, 0, 0, 0], [1, 1, 1, 1]])
    pred = np.array([[0, 0, 0, 1], [2, 2, 2, 3]])
    conf = score_image(pred, gt, 2).class_confusion()
    # columns: class 0, class 1, unmatched clusters
    np.testing.assert_array_equal(conf, [[3, 0, 1], [0, 3, 1]])


def test_add_counts_and_reset():
    a = Scorer(2)
    s = a.update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    b = Scorer(2)
    b.add({"tp": s.tp.tolist(), "fp": s.fp.tolist(), "fn": s.fn.tolist(), "total": s.total})
    assert a.compute()["miou"] == b.compute()["miou"]
    with pytest.raises(InputError, match="entries"):
        b.add({"tp": [1], "fp": [0], "fn": [0], "total": 1})
    b.reset()
    assert b.num_images == 0 and b.total == 0


@pytest.mark.parametrize("pred, gt, match", [
    (np.zeros((2, 2), int), np.zeros((2, 3), int), "same shape"),
    (np.zeros((2, 2)) + 0.5, np.zeros((2, 2), int), "integers"),
    (-np.ones((2, 2), int), np.zeros((2, 2), int), ">= 0"),
    (np.zeros((2, 2), int), np.full((2, 2), 3), "class ids"),
    (np.zeros((2, 2), int), np.full((2, 2), -2), "class ids"),
])
def test_bad_inputs_raise(pred, gt, match):
    with pytest.raises(InputError, match=match):
        Scorer(3).update(pred, gt)


def test_bad_options_raise():
    with pytest.raises(InputError):
        Scorer(0)
    with pytest.raises(InputError):
        Scorer(3, fp_counting="clean")
    with pytest.raises(InputError):
        score_image(np.zeros(2, int), np.zeros(2, int), 2, fp_counting="nope")
