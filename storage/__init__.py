"""Storage for lvd: URIs (file:// and s3://), the stage commit protocol, Parquet tables and
WebDataset shards. No model or Prefect code lives here."""
