"""Doctor's faiss install check: CPU and GPU faiss wheels are alternatives, never both."""
from lvd.doctor import check_faiss_install, faiss_distributions, render


def test_mixed_install_is_named_with_the_fix():
    check = check_faiss_install(["faiss-cpu", "faiss-gpu-cu12"])
    assert check is not None and not check.ok
    assert "faiss-cpu, faiss-gpu-cu12" in check.detail
    assert check.fix.startswith("pip uninstall -y faiss-cpu faiss-gpu-cu12 && pip install faiss-gpu-cu12")
    assert "FAIL  faiss install" in render([check])


def test_single_builds_pass():
    assert check_faiss_install(["faiss-cpu"]) is None
    assert check_faiss_install(["faiss-gpu-cu12"]) is None
    assert check_faiss_install([]) is None


def test_this_environment_is_read():
    assert "faiss-cpu" in faiss_distributions()
