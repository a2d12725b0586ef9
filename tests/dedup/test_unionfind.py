import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components

from tasks.dedup.unionfind import UnionFind


def _canonical(labels):
    """Relabel so two labelings of the same partition compare equal."""
    _, first = np.unique(labels, return_index=True)
    mapping = {labels[f]: i for i, f in enumerate(sorted(first))}
    return np.array([mapping[x] for x in labels])


def test_components_match_scipy_on_random_graphs_streamed_in_batches():
    rng = np.random.default_rng(1)
    for n, m in ((50, 20), (2000, 1500), (5000, 9000)):
        a = rng.integers(0, n, m)
        b = rng.integers(0, n, m)
        uf = UnionFind(n)
        for s in range(0, m, 700):
            uf.union(a[s:s + 700], b[s:s + 700])
        labels = uf.labels()
        graph = scipy.sparse.coo_matrix((np.ones(m), (a, b)), shape=(n, n))
        _, ref = connected_components(graph, directed=False)
        assert (_canonical(labels) == _canonical(ref)).all()
        # Labels are the smallest member of each component.
        for lab in np.unique(labels)[:50]:
            assert lab == np.nonzero(labels == lab)[0].min()


def test_star_and_chain_with_repeated_roots_in_one_batch():
    uf = UnionFind(10)
    uf.union(np.array([9, 8, 7, 6]), np.array([5, 5, 5, 5]))  # four writes to the same root
    uf.union(np.array([0, 1, 2]), np.array([1, 2, 3]))
    assert uf.labels().tolist() == [0, 0, 0, 0, 4, 5, 5, 5, 5, 5]
