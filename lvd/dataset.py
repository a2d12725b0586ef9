"""`lvd.open_dataset(uri)`: the curated shards of a dataset version, as manifest rows and samples.

A version's manifest may list shards written by earlier versions (a refresh reuses them by URL),
so readers take the URLs as they are: plain webdataset, wids or ``storage.shards.iter_samples``.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from storage.shards import iter_samples, read_manifest
from storage.uri import basename, parent
from storage.versions import shards_stage_of


@dataclass
class DatasetVersion:
    """One committed version's curated shards."""

    shards_uri: str
    manifest: list[dict]

    @property
    def version(self) -> str:
        return basename(parent(self.shards_uri))

    @property
    def shard_urls(self) -> list[str]:
        return [row["url"] for row in self.manifest]

    def __len__(self) -> int:
        return sum(row["nsamples"] for row in self.manifest)

    def samples(self, verify: bool = False) -> Iterator[tuple[str, dict[str, bytes]]]:
        """``(key, {ext: bytes})`` of every sample, shard by shard (sha256 checked with ``verify``)."""
        for row in self.manifest:
            yield from iter_samples(row["url"], expected_sha256=row["sha256"] if verify else None)

    def __iter__(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        return self.samples()

    def webdataset(self, **kwargs):
        """A plain ``webdataset.WebDataset`` over the shard URLs (``s3://`` goes through the configured store)."""
        import webdataset as wds

        kwargs.setdefault("shardshuffle", False)
        return wds.WebDataset(self.shard_urls, **kwargs)


def open_dataset(uri: str) -> DatasetVersion:
    """``{root}/{dataset}`` (the version ``latest`` names), a version URI or a shards stage URI."""
    stage = shards_stage_of(uri)
    return DatasetVersion(stage, read_manifest(stage).to_pylist())
