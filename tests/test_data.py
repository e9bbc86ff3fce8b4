"""Document sources and the tokenization convention."""

from __future__ import annotations

import json

import pytest

from plastiscope import DataError, load_documents
from plastiscope.data import encode


def test_text_file_one_document_per_line(tmp_path):
    f = tmp_path / "docs.txt"
    f.write_text("first doc\n\nsecond doc\n")
    docs = load_documents(f)
    assert docs.texts == ["first doc", "second doc"] and docs.source == str(f)


def test_jsonl_csv_tsv_keep_label_columns(tmp_path):
    rows = [{"text": "a cat", "label": "animal", "y": 1}, {"text": "a car", "label": "thing", "y": 2}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.csv").write_text("body,label\na cat,animal\n\"a car, red\",thing\n")
    (tmp_path / "d.tsv").write_text("text\tlabel\na cat\tanimal\na car\tthing\n")
    jsonl = load_documents(tmp_path / "d.jsonl", label_column="label")
    assert jsonl.texts == ["a cat", "a car"] and jsonl.column("label") == ["animal", "thing"] and jsonl.column("y") == [1, 2]
    csv = load_documents(tmp_path / "d.csv", text_column="body", label_column="label")
    assert csv.texts == ["a cat", "a car, red"] and csv.column("label") == ["animal", "thing"]
    assert load_documents(tmp_path / "d.tsv").column("label") == ["animal", "thing"]


def test_saved_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["x y", "z"], "label": [0, 1]}).save_to_disk(str(tmp_path / "ds"))
    docs = load_documents(tmp_path / "ds", label_column="label")
    assert docs.texts == ["x y", "z"] and docs.column("label") == [0, 1]


def test_list_and_max_docs():
    docs = load_documents(["a", "b", "c"], max_docs=2)
    assert docs.texts == ["a", "b"] and docs.source == "<list>"


def test_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"nope.txt: no such file or folder; pass a"):
        load_documents(tmp_path / "nope.txt")
    (tmp_path / "d.csv").write_text("body,label\nx,1\n")
    with pytest.raises(DataError, match=r"d.csv: no text column 'text'; columns are \['body', 'label'\] \(pass --text-column"):
        load_documents(tmp_path / "d.csv")
    with pytest.raises(DataError, match=r"d.csv: no column 'tag'; columns are \['label'\] \(choose one with --label-column"):
        load_documents(tmp_path / "d.csv", text_column="body", label_column="tag")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_documents(tmp_path / "bad.jsonl")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty.txt: no documents"):
        load_documents(tmp_path / "empty.txt")


def test_hash_changes_with_content():
    a, b = load_documents(["x", "y"]), load_documents(["x", "y "])
    assert a.sha256() == load_documents(["x", "y"]).sha256() != b.sha256()


def test_encode_offsets_align_with_text(tiny_sweep):
    tok = tiny_sweep[0].tokenizer
    text = "a small dog barks"
    ids, offsets = encode(tok, text, 48, return_offsets=True)
    assert ids[0] == tok.bos_token_id and offsets[0] == (0, 0)
    assert ids == encode(tok, text, 48)
    assert "".join(text[s:e] for s, e in offsets[1:]).replace(" ", "") == text.replace(" ", "")
