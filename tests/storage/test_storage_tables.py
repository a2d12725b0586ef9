import pyarrow as pa
import pytest

from storage.tables import SCHEMAS, read_table, write_table
from storage.uri import join, write_bytes_atomic

SCHEMA = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),
        pa.field("status", pa.int32(), nullable=False),
        pa.field("error", pa.string()),
    ]
)


def test_rows_roundtrip(storage_root):
    uri = join(storage_root, "crawl", "records.parquet")
    rows = [{"url": "http://a", "status": 200, "error": None}, {"url": "http://b", "status": 404, "error": "gone"}]
    write_table(uri, rows, SCHEMA)
    table = read_table(uri, schema=SCHEMA)
    assert table.to_pylist() == rows
    assert table.schema.field("status").type == pa.int32()


def test_table_is_reordered_and_cast(tmp_path):
    uri = str(tmp_path / "t.parquet")
    t = pa.table({"error": [None], "status": pa.array([1], pa.int64()), "url": ["u"]})
    write_table(uri, t, SCHEMA)
    out = read_table(uri)
    assert out.column_names == ["url", "status", "error"] and out.schema.field("status").type == pa.int32()


@pytest.mark.parametrize(
    "rows, match",
    [
        ([{"url": "u", "status": 1}], "missing \\['error'\\]"),
        ([{"url": "u", "status": 1, "error": None, "x": 2}], "unexpected \\['x'\\]"),
        ([{"url": None, "status": 1, "error": None}], "not nullable"),
        ([{"url": "u", "status": "ok", "error": None}], "do not fit"),
        (["not a dict"], "not a dict"),
    ],
)
def test_bad_rows_are_refused(tmp_path, rows, match):
    uri = str(tmp_path / "bad.parquet")
    with pytest.raises((ValueError, TypeError), match=match):
        write_table(uri, rows, SCHEMA)
    assert not (tmp_path / "bad.parquet").exists()


def test_bad_tables_are_refused(tmp_path):
    uri = str(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="do not match"):
        write_table(uri, pa.table({"url": ["u"]}), SCHEMA)
    with pytest.raises(TypeError, match="pyarrow.Table or a list"):
        write_table(uri, {"url": ["u"]}, SCHEMA)


def test_read_checks(storage_root):
    uri = join(storage_root, "t.parquet")
    with pytest.raises(FileNotFoundError, match="t.parquet"):
        read_table(uri)
    write_table(uri, [], SCHEMA)
    assert read_table(uri).num_rows == 0
    with pytest.raises(ValueError, match="differs"):
        read_table(uri, schema=SCHEMAS["shards.manifest"])
    write_bytes_atomic(uri, b"garbage")
    with pytest.raises(ValueError, match="not a readable Parquet"):
        read_table(uri)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_stage_schema_is_well_formed(tmp_path, name):
    import re

    schema = SCHEMAS[name]
    assert re.fullmatch(r"[a-z]+\.[a-z_]+", name), f"schema name {name!r} is not '<stage>.<table>'"
    assert isinstance(schema, pa.Schema) and len(set(schema.names)) == len(schema.names)
    uri = str(tmp_path / f"{name}.parquet")
    write_table(uri, [], schema)
    assert read_table(uri, schema=schema).num_rows == 0
