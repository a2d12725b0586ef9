"""Labelled evaluation sets from URIs, decoded once and checked before any model runs.

Kinds: ``fashion-mnist[:test]`` (offline Debian package), image folders (one sub-folder per
class, as torchvision's ImageFolder), WebDataset shards (a ``.tar`` or a folder of them; each
sample has an image field and a label field) and Parquet files (an encoded-image column and a
label column). Labels may be integers or class names; names are mapped to sorted ids over both
splits. Every image must have exactly one label: samples missing either, unequal counts, or test
classes never seen in train are refused with the offending keys.

Images are decoded to RGB, resized so the shorter side is size*256/224 and centre-cropped to
size (the DINOv2 evaluation transform), and kept as uint8; Fashion-MNIST stays 28x28 grayscale
and is resized when it becomes model input.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass

import numpy as np
from PIL import Image

from storage import uri as su
from tasks.datasets.fashion_mnist import LabelledImages
from tasks.evaluate.config import EvalSetConfig
from lvd.errors import LvdError

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp")


class EvalSetError(LvdError, ValueError):
    """An evaluation set whose images and labels do not fit together."""


@dataclass(frozen=True)
class EvalSet:
    name: str
    train: LabelledImages
    test: LabelledImages
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def eval_transform(img: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to size*256/224 (bicubic), centre-crop size x size; uint8 RGB."""
    img = img.convert("RGB")
    short = round(size * 256 / 224)
    scale = short / min(img.size)
    img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def _decode(data: bytes, size: int, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return eval_transform(im, size)
    except Exception as err:
        raise EvalSetError(f"{where}: cannot decode image ({type(err).__name__}: {err})") from None


def detect_kind(uri: str) -> str:
    if uri.startswith("fashion-mnist"):
        return "fashion_mnist"
    lowered = uri.lower()
    if lowered.endswith(".parquet"):
        return "parquet"
    if lowered.endswith(".tar"):
        return "webdataset"
    if su.scheme_of(uri) == "file" and os.path.isdir(su.open_fs(uri)[1]):
        path = su.open_fs(uri)[1]
        if any(n.endswith(".tar") for n in os.listdir(path)):
            return "webdataset"
        return "image_folder"
    raise EvalSetError(f"cannot tell what kind of evaluation set {uri!r} is: give kind explicitly")


def _image_folder(uri: str, size: int) -> tuple[list[np.ndarray], list[str]]:
    from tasks.datasets.image_folder import list_images

    root = su.open_fs(uri)[1]
    files = list_images(root)
    loose = [f for f in files if "/" not in f.replace(os.sep, "/")]
    if loose:
        raise EvalSetError(f"{uri}: {len(loose)} images have no class folder, e.g. {loose[:3]}")
    images, labels = [], []
    for rel in files:
        with open(os.path.join(root, rel), "rb") as f:
            images.append(_decode(f.read(), size, f"{uri}/{rel}"))
        labels.append(rel.replace(os.sep, "/").split("/", 1)[0])
    return images, labels


def _tar_urls(uri: str) -> list[str]:
    if uri.lower().endswith(".tar"):
        return [uri]
    return sorted(su.list_files(uri, suffix=".tar"))


def _webdataset(uri: str, size: int, label_key: str) -> tuple[list[np.ndarray], list[str]]:
    samples: dict[str, dict[str, bytes]] = {}
    for url in _tar_urls(uri):
        with su.open_input(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                key, _, ext = base.partition(".")
                full = os.path.join(os.path.dirname(member.name), key)
                samples.setdefault(f"{url}:{full}", {})[ext.lower()] = tar.extractfile(member).read()
    no_label = [k for k, v in samples.items() if label_key not in v]
    no_image = [k for k, v in samples.items() if not any(e in v for e in IMAGE_FIELDS)]
    if no_label or no_image:
        raise EvalSetError(f"{uri}: labels do not match images: {len(no_label)} samples without '{label_key}' "
                           f"(e.g. {no_label[:3]}), {len(no_image)} without an image (e.g. {no_image[:3]})")
    images, labels = [], []
    for key, fields in samples.items():
        data = next(fields[e] for e in IMAGE_FIELDS if e in fields)
        images.append(_decode(data, size, key))
        labels.append(fields[label_key].decode().strip())
    return images, labels


def _parquet(uri: str, size: int, image_key: str, label_key: str) -> tuple[list[np.ndarray], list[str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(su.read_bytes(uri)))
    missing = [c for c in (image_key, label_key) if c not in table.column_names]
    if missing:
        raise EvalSetError(f"{uri}: no column {missing} (columns: {table.column_names})")
    images_col, labels_col = table.column(image_key).to_pylist(), table.column(label_key).to_pylist()
    bad = [i for i, (im, lab) in enumerate(zip(images_col, labels_col)) if im is None or lab is None]
    if bad:
        raise EvalSetError(f"{uri}: labels do not match images: {len(bad)} rows lack an image or a label "
                           f"(rows {bad[:5]})")
    images = []
    for i, im in enumerate(images_col):
        data = im["bytes"] if isinstance(im, dict) else im
        images.append(_decode(data, size, f"{uri} row {i}"))
    return images, [str(lab) for lab in labels_col]


def _read_split(uri: str, cfg: EvalSetConfig, size: int) -> tuple[np.ndarray, list[str]] | LabelledImages:
    kind = cfg.kind if cfg.kind != "auto" else detect_kind(uri)
    if kind == "fashion_mnist":
        from tasks.datasets import fashion_mnist

        return fashion_mnist.load(uri.split(":", 1)[1] if ":" in uri else "train")
    if kind == "image_folder":
        images, labels = _image_folder(uri, size)
    elif kind == "webdataset":
        images, labels = _webdataset(uri, size, cfg.label_key)
    else:
        images, labels = _parquet(uri, size, cfg.image_key, cfg.label_key)
    if len(images) != len(labels):
        raise EvalSetError(f"{uri}: {len(images)} images but {len(labels)} labels")
    if not images:
        raise EvalSetError(f"{uri}: no images")
    return np.stack(images), labels


def _class_ids(train: list[str], test: list[str], where: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    unseen = sorted(set(test) - set(train))
    if unseen:
        raise EvalSetError(f"{where}: test labels {unseen[:5]} never occur in train")
    names = sorted(set(train), key=lambda s: (0, int(s)) if s.lstrip("-").isdigit() else (1, s))
    ids = {n: i for i, n in enumerate(names)}
    return np.array([ids[s] for s in train], np.int64), np.array([ids[s] for s in test], np.int64), names


def load_eval_set(cfg: EvalSetConfig, image_size: int, seed: int = 0) -> EvalSet:
    """Both splits of one set, decoded, label-checked and subset as configured."""
    train, test = _read_split(cfg.train, cfg, image_size), _read_split(cfg.test, cfg, image_size)
    if isinstance(train, LabelledImages) and isinstance(test, LabelledImages):
        from tasks.datasets.fashion_mnist import CLASS_NAMES

        classes = list(CLASS_NAMES)
    elif isinstance(train, LabelledImages) or isinstance(test, LabelledImages):
        raise EvalSetError(f"{cfg.name}: train and test must be the same kind of set")
    else:
        train_ids, test_ids, classes = _class_ids(train[1], test[1], cfg.name)
        train, test = LabelledImages(train[0], train_ids), LabelledImages(test[0], test_ids)
    if len(np.unique(train.labels)) < 2:
        raise EvalSetError(f"{cfg.name}: the train split has fewer than two classes")
    return EvalSet(cfg.name, train.subset(cfg.train_size, seed), test.subset(cfg.test_size, seed), classes)
