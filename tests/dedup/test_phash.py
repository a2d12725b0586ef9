import imagehash
import numpy as np
import scipy.fftpack

from tasks.dedup.phash import dct_matrix, gray_thumbnails, phash_bits, phash_codes
from tests.dedup.photos import photos


def test_dct_matrix_matches_scipy_dct2():
    x = np.random.default_rng(0).normal(size=(5, 32, 32))
    ref = scipy.fftpack.dct(scipy.fftpack.dct(x, axis=1), axis=2)
    m = dct_matrix(32)
    np.testing.assert_allclose(np.einsum("ki,nij,lj->nkl", m, x, m), ref, rtol=1e-10, atol=1e-9)


def test_phash_equals_imagehash_bit_for_bit_on_real_photos():
    imgs = [img for _, img in photos()]
    assert len(imgs) >= 20
    ref = np.array([imagehash.phash(img).hash.flatten() for img in imgs])
    mine = phash_bits(gray_thumbnails(imgs))
    assert mine.shape == (len(imgs), 64)
    assert (mine == ref).all()
    # Packed codes are the same bits, and distinct photos get distinct codes.
    packed = phash_codes(imgs)
    assert (np.unpackbits(packed, axis=1).astype(bool) == ref).all()
    assert len({c.tobytes() for c in packed}) == len(imgs)
