"""Storage for lvd; no model or Prefect code lives here.

* ``storage.uri``: plain paths, ``file://`` and ``s3://`` through fsspec; atomic writes; clear
  errors (``StorageUnavailable`` names the endpoint) instead of hangs.
* ``storage.commit``: the stage commit protocol (parts, ``_COMMITTED.json`` last, ``latest``).
* ``storage.tables``: Parquet tables checked against the per-stage schemas in ``SCHEMAS``.
* ``storage.shards``: WebDataset shards with sha256/md5, ``manifest.parquet`` and a wids index.
* ``storage.config``: ``StorageConfig``, the typed settings (also read from the environment).
"""
