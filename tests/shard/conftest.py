"""faiss runs single-threaded in these tests: on a shared, loaded 2-core machine OpenMP spin-waiting
makes small faiss jobs 30x slower with two threads than with one."""

import faiss
import pytest


@pytest.fixture(autouse=True)
def _faiss_one_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
