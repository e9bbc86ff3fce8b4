"""Document sources and the tokenization convention."""

from __future__ import annotations

import json
import re

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


# ---------------------------------------------------------------------- bad input is named, never lost silently
def test_tsv_has_no_quoting_so_a_stray_quote_merges_nothing(tmp_path):
    rows = [f"document number {i}\tlabel{i % 3}" for i in range(100)]
    rows[5] = '"an opening quote that never closes\tlabel2'
    (tmp_path / "d.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    docs = load_documents(tmp_path / "d.tsv", label_column="label")
    assert len(docs) == 100 and docs.texts[5] == '"an opening quote that never closes'
    assert docs.texts[6] == "document number 6" and docs.column("label")[99] == "label0"


def test_tsv_row_with_a_tab_in_the_text_names_the_line(tmp_path):
    (tmp_path / "d.tsv").write_text("text\tlabel\nfine\ta\nbroken\ttext\tb\n")
    with pytest.raises(DataError, match=r"d.tsv:3: 3 fields where the header has 2; a TSV field cannot hold a tab"):
        load_documents(tmp_path / "d.tsv")


def test_csv_record_spanning_lines_is_named(tmp_path):
    lines = ["text,label"] + [f"row {i},x" for i in range(10)]
    lines[3] = '"row 2 opens a quote,x'
    lines[7] = 'row 6 closes it",x'
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"d.csv: 1 record\(s\) span several lines \(the first: lines 4-8\).*unbalanced quote"):
        docs = load_documents(tmp_path / "d.csv")
    assert len(docs) == 6
    (tmp_path / "e.csv").write_text('text,label\nfine,a\n"never closed,b\nmore,c\n')
    with pytest.raises(DataError, match=r"e.csv:\d+: unexpected end of data"):
        load_documents(tmp_path / "e.csv")
    (tmp_path / "f.csv").write_text("text,label\na,b,c\n")
    with pytest.raises(DataError, match=r"f.csv:2: 3 fields where the header has 2; quote fields that hold commas"):
        load_documents(tmp_path / "f.csv")


def test_jsonl_line_that_is_not_an_object_or_lacks_the_text(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n["a", "list"]\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: a JSON list, not an object; write one object per line"):
        load_documents(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n\n"just a string"\n')
    with pytest.raises(DataError, match=r"b.jsonl:3: a JSON str, not an object"):
        load_documents(tmp_path / "b.jsonl")
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(DataError, match=r"c.jsonl:2: no 'text' field \(fields: \['txt'\]\)"):
        load_documents(tmp_path / "c.jsonl")
    (tmp_path / "d.jsonl").write_text('{"text": "ok", "a": 1}\n{"text": "more", "b": 2}\n')
    docs = load_documents(tmp_path / "d.jsonl")
    assert docs.column("a") == [1, None] and docs.column("b") == [None, 2]  # every record's columns, not the first's only


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".tsv"])
def test_non_utf8_byte_names_file_and_line(tmp_path, suffix):
    head = {".txt": b"", ".jsonl": b"", ".csv": b"text\n", ".tsv": b"text\n"}[suffix]
    line = {".jsonl": b'{"text": "caf\xe9"}\n'}.get(suffix, b"caf\xe9\n")
    ok = b'{"text": "fine"}\n' if suffix == ".jsonl" else b"fine\n"
    (tmp_path / f"d{suffix}").write_bytes(head + ok + ok + line)
    with pytest.raises(DataError, match=rf"d{suffix}:{3 + bool(head)}: byte 0xe9 is not UTF-8; re-save the file as UTF-8"):
        load_documents(tmp_path / f"d{suffix}")


def test_byte_order_mark_is_not_part_of_the_header(tmp_path):
    (tmp_path / "d.csv").write_bytes("text,label\nx,1\n".encode("utf-8-sig"))
    assert load_documents(tmp_path / "d.csv", label_column="label").texts == ["x"]


def test_tsv_written_by_pandas_or_csv_reads_as_written(tmp_path):
    import csv as csv_module

    import pandas as pd

    from plastiscope.demo.corpus import load_corpus

    texts = load_corpus("validation", 2000).texts
    quoted = [t for t in texts if '"' in t]
    assert len(quoted) > 50  # real glosses with quotation marks, e.g. 'not secured within a cover; "an unbound book"'
    frame = pd.DataFrame({"text": texts, "label": [f"l{i % 3}" for i in range(len(texts))]})
    frame.to_csv(tmp_path / "pandas.tsv", sep="\t", index=False)
    with open(tmp_path / "csv.tsv", "w", newline="") as f:
        writer = csv_module.writer(f, delimiter="\t")
        writer.writerow(["text", "label"])
        writer.writerows(frame.itertuples(index=False))
    frame.to_csv(tmp_path / "all.tsv", sep="\t", index=False, quoting=csv_module.QUOTE_ALL)
    for name in ("pandas.tsv", "csv.tsv", "all.tsv"):
        docs = load_documents(tmp_path / name, label_column="label")
        assert docs.texts == texts and docs.column("label") == list(frame["label"]), name


def test_tsv_that_reads_two_ways_is_refused_naming_the_line(tmp_path):
    rows = [f"document number {i}\tlabel{i % 3}" for i in range(20)]
    rows[7] = '"a quoted document"\tlabel1'  # literally a quoted text, or the text without quotes: no writer wrote this
    (tmp_path / "d.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"d.tsv:9: this TSV reads differently with and without quoting"):
        load_documents(tmp_path / "d.tsv")


@pytest.mark.parametrize("name, content", [
    ("blank.csv", "text,topic\nthe cat sat,animals\nstocks fell,\nrain again,weather\n"),  # an empty cell (pandas writes NaN so)
    ("null.jsonl", '{"text": "the cat sat", "topic": "animals"}\n{"text": "stocks fell", "topic": null}\n'),
    ("nan.jsonl", '{"text": "the cat sat", "topic": "animals"}\n{"text": "stocks fell", "topic": NaN}\n'),
])
def test_a_downstream_label_column_with_missing_labels_is_refused(tmp_path, name, content):
    """A labelled downstream task would otherwise train and score the text "None", "nan" or "" as a document's label."""
    from plastiscope.downstream import DownstreamTask

    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=re.escape(str(tmp_path / name)) + r": 1 document\(s\) have no 'topic' label \(the first: "
                                        r"document 1\); fill the label in or remove those documents"):
        DownstreamTask.from_documents(load_documents(tmp_path / name), label_column="topic")
