"""mindcv_ext.benchmark.report: CSV, markdown and JSON writers."""
import csv
import json

from mindcv_ext.benchmark.report import markdown_table, write_csv, write_json

ROWS = [{"model": "a", "ms": 1.5, "extra": "ignored"}, {"model": "b"}]


def test_write_csv_keeps_the_columns_given(tmp_path):
    path = tmp_path / "out.csv"
    write_csv(str(path), ["model", "ms"], ROWS)
    with open(path, newline="") as stream:
        assert list(csv.reader(stream)) == [["model", "ms"], ["a", "1.5"], ["b", ""]]
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no temporary file left


def test_markdown_table():
    assert markdown_table(ROWS, ["model", "ms"]) == "| model | ms |\n|---|---|\n| a | 1.5 |\n| b |  |"
    assert markdown_table([], ["x"]) == "| x |\n|---|"


def test_write_json(tmp_path):
    write_json(str(tmp_path / "machine.json"), {"cpus": 2, "simd": ["avx2"]})
    assert json.loads((tmp_path / "machine.json").read_text()) == {"cpus": 2, "simd": ["avx2"]}
