import numpy as np
import pytest

from tasks.dedup.hamming import hamming_neighbour_pairs, hamming_pairs_bruteforce, popcount_distance


def _planted_codes(rng, n_base, bits, copies, max_flips):
    base = rng.integers(0, 256, (n_base, bits // 8), dtype=np.uint8)
    rows = [base]
    for _ in range(copies):
        flipped = np.unpackbits(base, axis=1)
        for r in range(n_base):
            idx = rng.choice(bits, size=rng.integers(0, max_flips + 1), replace=False)
            flipped[r, idx] ^= 1
        rows.append(np.packbits(flipped, axis=1))
    return np.concatenate(rows)


@pytest.mark.parametrize("bits,radius", [(64, 4), (64, 8), (128, 8), (256, 12)])
def test_multi_index_search_finds_exactly_the_bruteforce_pairs(bits, radius):
    rng = np.random.default_rng(bits + radius)
    codes = _planted_codes(rng, 300, bits, copies=2, max_flips=radius + 3)
    codes[5] = codes[6] = codes[7]  # identical codes are grouped without a search
    found = set()
    for i, j, d in hamming_neighbour_pairs(codes, radius):
        assert (i < j).all() and (d <= radius).all()
        assert (popcount_distance(codes[i], codes[j]) == d).all()
        found |= set(zip(i.tolist(), j.tolist()))
    ref = hamming_pairs_bruteforce(codes, radius)
    assert found <= ref
    # Holders of one code are linked to its first holder only; every other true pair must be
    # found between the first holders of the two codes.
    first = {}
    for i, c in enumerate(codes):
        first.setdefault(c.tobytes(), i)
    for i, j in ref:
        a, b = sorted((first[codes[i].tobytes()], first[codes[j].tobytes()]))
        if a == b:
            assert all(x == a or (a, x) in found for x in (i, j))
        else:
            assert (a, b) in found


def test_radius_zero_only_links_identical_codes():
    codes = np.array([[1, 2], [1, 2], [1, 3], [9, 9], [1, 2]], dtype=np.uint8)
    pairs = set()
    for i, j, d in hamming_neighbour_pairs(codes, 0):
        pairs |= set(zip(i.tolist(), j.tolist()))
    assert pairs == {(0, 1), (0, 4)}


def test_bucket_windows_cut_long_runs_and_skip_singletons():
    from tasks.dedup.hamming import bucket_windows

    keys = np.array([1, 2, 2, 3, 3, 3, 3, 3, 4], dtype=np.uint64)
    start, size = bucket_windows(keys, cap=3)
    assert start.tolist() == [1, 3, 6] and size.tolist() == [2, 3, 2]


def test_degenerate_bucket_is_bounded_but_still_linked_through_other_substrings():
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, (400, 8), dtype=np.uint8)
    codes[:, :2] = 0  # every code shares its first 16 bits: one huge bucket for that substring
    codes[399] = codes[0]
    codes[399, 7] ^= 1
    found = set()
    for i, j, d in hamming_neighbour_pairs(codes, 3, bucket_cap=8):
        found |= set(zip(i.tolist(), j.tolist()))
    assert (0, 399) in found
    assert found <= hamming_pairs_bruteforce(codes, 3)
