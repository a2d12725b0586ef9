import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tasks.evaluate.config import EvaluateConfig, EvalSetConfig
from tasks.evaluate.datasets import EvalSetError, load_eval_set
from tasks.evaluate.knn import knn_accuracy
from tasks.evaluate.run import evaluate
from tests.distill.test_distill import write_run
from tests.train.conftest import needs_fashion_mnist, tiny_config


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 12), colour).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path, samples: dict[str, dict[str, bytes]]):
    with tarfile.open(path, "w") as tar:
        for key, fields in samples.items():
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_image_folder_webdataset_and_parquet_sets(tmp_path):
    for split in ("train", "test"):
        for cls, colour in (("cat", "red"), ("dog", "blue")):
            (tmp_path / "folder" / split / cls).mkdir(parents=True)
            for i in range(3):
                (tmp_path / "folder" / split / cls / f"{i}.png").write_bytes(_png(colour))
    folder = load_eval_set(EvalSetConfig(name="f", train=str(tmp_path / "folder/train"),
                                         test=f"file://{tmp_path}/folder/test"), 16)
    assert folder.classes == ["cat", "dog"] and folder.train.images.shape == (6, 16, 16, 3)
    assert folder.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert tuple(folder.train.images[4, 8, 8]) == (0, 0, 255)

    _tar(tmp_path / "train.tar", {f"s{i}": {"png": _png("red" if i % 2 else "green"), "cls": str(i % 2).encode()}
                                  for i in range(4)})
    _tar(tmp_path / "test.tar", {"t0": {"png": _png("green"), "cls": b"0"}})
    wds = load_eval_set(EvalSetConfig(name="w", train=str(tmp_path / "train.tar"), test=str(tmp_path / "test.tar"),
                                      label_key="cls"), 16)
    assert wds.classes == ["0", "1"] and sorted(wds.train.labels.tolist()) == [0, 0, 1, 1]

    table = pa.table({"image": [_png("red"), _png("blue")], "label": ["a", "b"]})
    pq.write_table(table, tmp_path / "t.parquet")
    par = load_eval_set(EvalSetConfig(name="p", train=str(tmp_path / "t.parquet"), test=str(tmp_path / "t.parquet")), 16)
    assert par.num_classes == 2 and len(par.test) == 2


def test_labels_that_do_not_match_their_images_are_refused(tmp_path):
    _tar(tmp_path / "a.tar", {"s0": {"png": _png("red"), "cls": b"0"}, "s1": {"png": _png("red")},
                              "s2": {"cls": b"1"}})
    with pytest.raises(EvalSetError, match=r"labels do not match images: 1 samples without 'cls'.*s1.*1 without an image.*s2"):
        load_eval_set(EvalSetConfig(train=str(tmp_path / "a.tar"), test=str(tmp_path / "a.tar"), label_key="cls"), 16)
    pq.write_table(pa.table({"image": [_png("red"), _png("red")], "label": ["a", None]}), tmp_path / "b.parquet")
    with pytest.raises(EvalSetError, match=r"1 rows lack an image or a label \(rows \[1\]\)"):
        load_eval_set(EvalSetConfig(train=str(tmp_path / "b.parquet"), test=str(tmp_path / "b.parquet")), 16)
    pq.write_table(pa.table({"image": [_png("red"), _png("blue")], "label": ["a", "b"]}), tmp_path / "tr.parquet")
    pq.write_table(pa.table({"image": [_png("red")], "label": ["zebra"]}), tmp_path / "te.parquet")
    with pytest.raises(EvalSetError, match=r"test labels \['zebra'\] never occur in train"):
        load_eval_set(EvalSetConfig(train=str(tmp_path / "tr.parquet"), test=str(tmp_path / "te.parquet")), 16)


@needs_fashion_mnist
def test_evaluate_compares_checkpoints_and_baselines(tmp_path):
    ckpt = write_run(tmp_path / "tiny", tiny_config())
    cfg = EvaluateConfig(
        models=[ckpt],
        baselines=["random:vit_pico", f"random:{ckpt}@3", "pixels"],
        datasets=[EvalSetConfig(train_size=200, test_size=100)],
        image_size=28,
        pixels_size=28,
        knn=dict(ks=(10, 20)),
        linear=dict(lrs=(1e-2, 1e-1), epochs=2, batch_size=32),
        copy_detection=dict(enabled=False),
        pca=dict(n_images=2, image_size=56),
        device="cpu",
    )
    logs = []
    summary = evaluate(cfg, f"file://{tmp_path}/eval", log=logs.append)
    table = {row["model"]: row for row in summary["table"]}
    assert list(table) == ["tiny@step-1", "random:vit_pico@0", "random:tiny@3", "pixels:28"]
    assert table["random:tiny@3"]["params"] == table["tiny@step-1"]["params"]
    for row in table.values():
        for key in ("fashion-mnist/knn_top1_k20", "fashion-mnist/linear_top1"):
            assert 0.0 <= row[key] <= 1.0, key
    # raw pixels: the same k-NN as a direct computation on flattened, centred, normalised pixels
    from tasks.datasets import fashion_mnist

    train = fashion_mnist.load("train").subset(200, 0)
    test = fashion_mnist.load("test").subset(100, 0)

    def pix(images):
        from tasks.datasets.tensors import uint8_to_input

        x = uint8_to_input(images, 28).flatten(1)
        return torch.nn.functional.normalize(x - x.mean(1, keepdim=True), dim=1)

    ref = knn_accuracy(pix(train.images), torch.as_tensor(train.labels), pix(test.images), torch.as_tensor(test.labels),
                       (20,), 0.07, 10)[20]
    assert table["pixels:28"]["fashion-mnist/knn_top1_k20"] == pytest.approx(ref, abs=1e-5)
    assert table["pixels:28"]["fashion-mnist/knn_top1_k20"] > 0.5
    rows = pq.read_table(tmp_path / "eval" / "results.parquet").to_pylist()
    assert {r["metric"] for r in rows} >= {"knn_top1_k10", "linear_top1", "linear_heldout_top1"}
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| tiny@step-1 |" in report and "pca-tiny-step-1.png" in report
    png = Image.open(tmp_path / "eval" / "pca-tiny-step-1.png")
    assert png.size[1] == 2 * 164 + 4
    assert set(summary["pictures"]) == {"tiny@step-1", "random:vit_pico@0", "random:tiny@3"}
    json.loads((tmp_path / "eval" / "summary.json").read_text())
    # features are cached: a second run reads them instead of recomputing
    cached = sorted(p.name for p in (tmp_path / "eval" / "features").iterdir())
    assert len(cached) == 4 * 2
    again = evaluate(cfg.model_copy(update={"pca": cfg.pca.model_copy(update={"enabled": False})}),
                     f"file://{tmp_path}/eval", log=lambda m: None)
    assert again["table"] == summary["table"]


@needs_fashion_mnist
@pytest.mark.slow
def test_copy_detection_on_the_planted_set(tmp_path):
    cfg = EvaluateConfig(
        baselines=["random:vit_pico", "pixels"],
        datasets=[EvalSetConfig(train_size=20, test_size=10)],
        image_size=56,
        knn=dict(ks=(10,)),
        linear=dict(enabled=False),
        copy_detection=dict(enabled=True, n_with_copies=3, edits=("exact", "reencode", "flip")),
        pca=dict(enabled=False),
        device="cpu",
    )
    summary = evaluate(cfg, f"file://{tmp_path}/eval", log=lambda m: None)
    table = {row["model"]: row for row in summary["table"]}
    for row in table.values():
        assert 0.0 <= row["planted/copy_micro_ap"] <= 1.0 and 0.0 <= row["planted/copy_recall_at_p90"] <= 1.0
    # raw pixels find byte-identical and re-encoded copies first (similarity ~1): 6 of the 9 pairs at precision 1
    assert table["pixels:32"]["planted/copy_micro_ap"] >= 6 / 9 - 1e-6
    assert table["pixels:32"]["planted/copy_recall_at_p90"] >= 6 / 9 - 1e-6


def test_bad_model_or_set_fails_before_any_work(tmp_path):
    cfg = EvaluateConfig(models=[f"file://{tmp_path}/missing"], baselines=["pixels"],
                         datasets=[EvalSetConfig(train=str(tmp_path / "x.parquet"), test=str(tmp_path / "x.parquet"))])
    pq.write_table(pa.table({"image": [_png("red")], "label": [None]}), tmp_path / "x.parquet")
    with pytest.raises(EvalSetError):
        evaluate(cfg, f"file://{tmp_path}/out", log=lambda m: None)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="nothing to evaluate"):
        EvaluateConfig(models=[], baselines=[])
