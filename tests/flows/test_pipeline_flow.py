"""lvd-pipeline end to end on the demo web: bootstrap embedder, curation, training, export; a rerun
skips what is committed."""
import pytest

from storage.commit import read_commit, read_latest, stage_uri
from lvd.demo_web import DemoWeb, serve_demo_web
from tasks.embed.backbone import load_embedder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_backend")]

# The test web holds ~60 pictures: too few to train a PCA hash, so pHash; a few training steps.
TINY = ["dedup.hash_method=phash", "train.optim.total_steps=4", "train.checkpoint.every_steps=2",
        "train.eval.knn_every_steps=0", "train.eval.knn_dataset=none", "train.optim.batch_size_per_rank=16",
        "distill.optim.total_steps=3", "distill.checkpoint.every_steps=3", "distill.eval.knn_every_steps=0",
        "distill.eval.knn_dataset=none", "distill.optim.batch_size_per_rank=16",
        "evaluate.baselines=[pixels]", "evaluate.linear.epochs=1", "evaluate.copy_detection.enabled=false",
        "evaluate.pca.n_images=1", "evaluate.datasets=[{name: fmnist, train: fashion-mnist, test: 'fashion-mnist:test', train_size: 200, test_size: 100}]"]


def test_pipeline_bootstraps_curates_trains_and_skips_on_rerun(demo_web_dir, tmp_path):
    from flows.pipeline import lvd_pipeline
    from lvd.demo import demo_config

    root = f"file://{tmp_path}/data"
    web = DemoWeb.load(demo_web_dir)
    with serve_demo_web(demo_web_dir) as server:
        cfg = demo_config("cpu-tiny", [f"storage.root={root}", "embed.backbone=bootstrap", *TINY], server, web)
        first = lvd_pipeline(cfg)
        embed = read_commit(stage_uri(root, cfg.dataset, cfg.version, "embed"))
        assert first["bootstrap_backbone"].endswith("bootstrap/backbone.pt")
        assert embed["extra"]["model_id"].startswith("checkpoint:"), embed["extra"]
        shards = read_commit(stage_uri(root, cfg.dataset, cfg.version, "shards"))
        assert shards["counts"]["samples"] > 0 and read_latest(root, cfg.dataset) == cfg.version
        assert first["train"]["run_uri"].endswith(f"runs/{cfg.dataset}-{cfg.version}-vit_pico")
        embedder = load_embedder(first["backbone"], "cpu")
        assert embedder.dim == 64
        table = first["evaluate"]["table"]
        assert len(table) >= 4, table  # trained, distilled, the trained run at random init, pixels baseline
        run_name = first["train"]["run_uri"].rstrip("/").rsplit("/", 1)[1]
        assert f"random:{run_name}@0" in [row["model"] for row in table], table
        assert first["evaluate"]["report_uri"].endswith("report.md")
        requests = server.stats()["requests"]
        second = lvd_pipeline(cfg)
        assert server.stats()["requests"] == requests, "a rerun must not crawl again"
    assert read_commit(stage_uri(root, cfg.dataset, cfg.version, "shards"))["committed_at"] == shards["committed_at"]
    assert second["curate"]["stages"]["shards"]["counts"] == first["curate"]["stages"]["shards"]["counts"]
