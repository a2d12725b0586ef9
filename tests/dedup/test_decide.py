import numpy as np

from tasks.dedup import decide


def test_representative_is_largest_then_most_bytes_then_first():
    labels = np.array([0, 0, 0, 3, 3, 5])
    valid = np.array([True, True, True, True, False, True])
    area = np.array([100, 400, 400, 10, 99, 1])
    nbytes = np.array([5, 7, 9, 1, 1, 1])
    assert decide.representatives(labels, valid, "resolution", area, nbytes).tolist() == [2, 2, 2, 3, -1, 5]
    assert decide.representatives(labels, valid, "bytes", area, nbytes).tolist() == [2, 2, 2, 3, -1, 5]
    assert decide.representatives(labels, valid, "first", area, nbytes).tolist() == [0, 0, 0, 3, -1, 5]
    nbytes2 = np.array([50, 7, 9, 1, 1, 1])
    assert decide.representatives(labels, valid, "bytes", area, nbytes2).tolist()[:3] == [0, 0, 0]


def test_reasons_follow_the_cascade():
    # rows 0,1 byte-identical; 2 joins them by hash; 3 by copy detection; 4 alone; 5 corrupt.
    valid = np.array([True, True, True, True, True, False])
    exact = np.array([0, 0, 2, 3, 4, 5])
    hashed = np.array([0, 0, 0, 3, 4, 5])
    final = np.array([0, 0, 0, 0, 4, 5])
    area = np.array([10, 10, 50, 1, 1, 1])
    nbytes = np.ones(6, dtype=np.int64)

    def reps(lab):
        return decide.representatives(lab, valid, "resolution", area, nbytes)

    reasons = decide.removal_reasons([("sha256", reps(exact)), ("pca-hash", reps(hashed)), ("copy", reps(final))], valid)
    # Row 0 survives sha256 dedup (first of its pair) and loses to row 2 at the hash level.
    assert reasons.tolist() == ["pca-hash", "sha256", None, "copy", None, "corrupt"]


def test_contaminated_components_are_dropped_whole_with_their_cause():
    labels = np.array([0, 0, 0, 3, 3, 5])
    valid = np.ones(6, dtype=bool)
    sim = np.array([0.1, 0.5, 0.9, 0.2, 0.3, 0.8], dtype=np.float32)
    idx = np.array([7, 8, 9, 1, 1, 4])
    dropped, cause, cause_sim = decide.contaminated_components(labels, valid, sim, idx, 0.45)
    assert dropped.tolist() == [True, True, True, False, False, True]
    # Row 1 matched on its own (8); row 0 inherits its component's best match (9).
    assert cause.tolist() == [9, 8, 9, -1, -1, 4]
    np.testing.assert_allclose(cause_sim[[0, 1, 2, 5]], [0.9, 0.5, 0.9, 0.8])
