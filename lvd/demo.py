"""`lvd demo` / `make demo`: serve the demo web on 127.0.0.1 and run the main job on it.

The demo web (real pictures from Debian's Fashion-MNIST and scikit-image's photos, plus
hostile cases) is built once under `{data_dir}/demo-web`; its hosts are reached through the
crawl's static resolve map, so nothing leaves this machine.
"""
from __future__ import annotations

import time
from pathlib import Path

from flows.config import PipelineConfig
from lvd.config import apply_overrides, preset_path, validate

DEMO_IMAGES = 600
QUERIES_PER_CLASS = 10
EVAL_IMAGES = 200


def write_image_folder(root: Path, images, labels, names: list[str], side: int = 112) -> Path:
    """Fashion-MNIST arrays as `root/<class>/<i>.png`, the image-folder layout query sets accept."""
    from PIL import Image

    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / names[int(label)].replace("/", "-").replace(" ", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").resize((side, side), Image.Resampling.BICUBIC).save(folder / f"{i:05d}.png")
    return root


def write_demo_sets(web_dir: Path) -> tuple[Path, Path]:
    """A curated query set (Fashion-MNIST train, 10 per class) and an evaluation set to decontaminate
    against (Fashion-MNIST test): the first drives retrieval, the second must stay out of the pool."""
    import numpy as np

    from tasks.datasets import fashion_mnist

    queries, evalset = web_dir / "queries" / "fashion-mnist", web_dir / "evalsets" / "fashion-mnist-test"
    if not queries.exists():
        train = fashion_mnist.load("train")
        rng = np.random.default_rng(7)
        picks = np.concatenate([rng.choice(np.flatnonzero(train.labels == c), QUERIES_PER_CLASS, replace=False)
                                for c in range(10)])
        write_image_folder(queries, train.images[picks], train.labels[picks], fashion_mnist.CLASS_NAMES)
    if not evalset.exists():
        test = fashion_mnist.load("test")
        write_image_folder(evalset, test.images[:EVAL_IMAGES], test.labels[:EVAL_IMAGES], fashion_mnist.CLASS_NAMES)
    return queries, evalset


def demo_config(config: str, overrides: list[str], server, web) -> PipelineConfig:
    """The preset, pointed at the served demo web (inputs, resolve map, blocklist)."""
    import yaml

    data = yaml.safe_load(preset_path(config).read_text()) or {}
    # The demo web's own settings (resolve map, blocklist, body cap, timeouts) give each hostile
    # case its documented reason; the preset may still tune parts, shards and concurrency.
    crawl = {**server.crawl_settings(), **(data.get("crawl") or {})}
    data["crawl"] = crawl
    queries, evalset = write_demo_sets(Path(web.root))
    retrieve = dict(data.get("retrieve") or {})
    retrieve.setdefault("queries", [{"name": "fashion-mnist", "uri": str(queries), "rule": "sample",
                                     "n_neighbours": 4}])
    data["retrieve"] = retrieve
    dedup = dict(data.get("dedup") or {})
    dedup.setdefault("eval_sets", [str(evalset)])
    data["dedup"] = dedup
    data.setdefault("inputs", [str(web.warc)])
    data = apply_overrides(PipelineConfig, data, overrides)
    return validate(PipelineConfig, data)


def run_demo(data_dir: str, config: str = "cpu-tiny", overrides: list[str] | None = None) -> dict:
    from flows.pipeline import lvd_pipeline
    from lvd.demo_web import DemoWeb, build_demo_web, serve_demo_web

    web_dir = Path(data_dir) / "demo-web"
    if (web_dir / "demo.json").exists():
        web = DemoWeb.load(web_dir)
        print(f"demo web: reusing {web_dir}")
    else:
        print(f"demo web: building {DEMO_IMAGES} pictures under {web_dir}")
        web = build_demo_web(web_dir, n_images=DEMO_IMAGES)
    started = time.monotonic()
    with serve_demo_web(web_dir) as server:
        print(f"demo web: serving {len(web.pages)} pages on 127.0.0.1:{server.port}")
        # No embedding model is given: the pipeline trains a bootstrap ViT on the query set first.
        cfg = demo_config(config, ["embed.backbone=bootstrap", *(overrides or [])], server, web)
        result = lvd_pipeline(cfg)
    elapsed = time.monotonic() - started
    curated = result["curate"]
    print(f"\nlvd-pipeline finished in {elapsed:.0f} s: dataset {curated['dataset']} version {curated['version']}")
    if "bootstrap_backbone" in result:
        print(f"  bootstrap embedder  {result['bootstrap_backbone']}")
    for stage, info in curated["stages"].items():
        print(f"  {stage:<9} {info['uri']}")
        print(f"            {info['counts']}")
    print(f"  trained backbone    {result['backbone']}")
    print(f"  training run        {result['train']['run_uri']}  (metrics.parquet, summary.json)")
    for key, where in result.get("reports", {}).items():
        print(f"  {key:<19} {where}")
    print("\ninspect a stage with: .venv/bin/lvd info <uri>")
    return result
