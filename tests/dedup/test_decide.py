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


def test_centrality_is_the_mean_similarity_within_the_component():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 5))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.array([0, 0, 0, 0, 4, 4, 6, 6, 6])
    valid = np.array([True] * 8 + [False])

    def chunks():  # two parts, streamed
        yield 0, x[:5]
        yield 5, x[5:]

    c = decide.centrality(labels, valid, chunks)
    for i in range(4):
        assert abs(c[i] - np.mean(x[:4] @ x[i])) < 1e-5
    # A pair has no medoid; the third component has only two valid members; invalid rows get none.
    assert np.isnan(c[4:]).all()


def test_keep_original_prefers_the_central_colour_unpadded_full_quality_member():
    # One component: 0 original, 1 text overlay (more bytes, off centre), 2 heavy re-encode (central,
    # few bytes), 3 padded copy (larger raw area, same picture), 4 grey copy, 5 half-size copy.
    labels = np.zeros(6, dtype=np.int64)
    valid = np.ones(6, dtype=bool)
    central = np.array([0.97, 0.92, 0.971, 0.96, 0.90, 0.969], dtype=np.float32)
    area = np.array([1000, 1000, 1000, 1440, 1440, 250])
    content = np.array([1000, 1000, 1000, 1010, 1000, 250], dtype=np.float64)
    grey = np.array([False, False, False, False, True, False])
    nbytes = np.array([900, 1000, 300, 1300, 800, 250])
    rep = decide.representatives(labels, valid, "original", area, nbytes, content, grey, central)
    assert rep.tolist() == [0] * 6
    # The old rule keeps the padded copy (largest area).
    assert decide.representatives(labels, valid, "resolution", area, nbytes).tolist() == [3] * 6
    # Without the original, the re-encode is the unedited picture left... unless a full-quality copy is
    # there: here the padded one (its border costs no picture bytes) is central enough and wins on bytes.
    rest = valid.copy()
    rest[0] = False
    assert decide.representatives(labels, rest, "original", area, nbytes, content, grey, central)[1] == 3
    # A pair (no medoid): colour beats grey, and the unpadded one beats the padded one.
    pair = np.array([0, 0, 2, 2])
    rep = decide.representatives(pair, np.ones(4, bool), "original", np.array([100, 144, 100, 144]),
                                 np.array([90, 120, 90, 95]), np.array([100.0, 101.0, 100.0, 101.0]),
                                 np.array([False, True, False, False]), np.full(4, np.nan, np.float32))
    assert rep.tolist() == [0, 0, 2, 2]
    # The cascade: the final survivor also survives the finer levels.
    finer = np.array([0, 0, 2, 2, 2, 5])
    fine_rep = decide.representatives(finer, valid, "original", area, nbytes, content, grey, central)
    assert fine_rep[0] == 0


def test_keep_original_survivor_of_a_component_survives_every_finer_level():
    # Rows 0 and 1 are hash duplicates; copy detection adds row 2. Within the hash pair both are
    # candidates and row 1 is the more central; in the whole component row 1 has too few bytes
    # (80 < 0.75 x 130) and row 0 wins. Candidates chosen per level left no survivor at all.
    valid = np.ones(3, dtype=bool)
    hashed, final = np.array([0, 0, 2]), np.array([0, 0, 0])
    area = np.full(3, 100)
    nbytes = np.array([100, 80, 130])
    central = np.array([0.94, 0.95, 0.93], dtype=np.float32)
    grey = np.zeros(3, dtype=bool)

    def reps(lab):
        return decide.representatives(lab, valid, "original", area, nbytes, area.astype(float), grey, central,
                                      final_labels=final)

    reasons = decide.removal_reasons([("pca-hash", reps(hashed)), ("copy", reps(final))], valid)
    assert reasons.tolist() == [None, "pca-hash", "copy"]
