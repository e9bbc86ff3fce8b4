"""Documents and the one tokenization convention every metric uses.

**Convention.** One document is one sequence: it is tokenized with the checkpoint's own
tokenizer, without the tokenizer's automatic special tokens, the BOS token is prepended
where the tokenizer has one, and the result is truncated to the model's context
(``n_ctx`` tokens, BOS included). Nothing is packed or strided across documents, so a
per-document metric (a pooled probe feature, a document's loss) always sees exactly one
document. Batches are right-padded and carry a mask; padding never reaches a metric.

Sources: a plain text file (one document per line), JSONL, CSV/TSV (a text column and
optional label columns), a ``datasets`` dataset saved with ``save_to_disk``, or a Python
list of strings. Files are UTF-8 (a byte that is not names its line). CSV follows RFC 4180
(quoted fields may hold commas and line breaks; a warning names records that span lines,
the sign of an unbalanced quote); a TSV is read as written: literally (a quote is a character,
so one stray quote never merges rows), or with the quoting pandas and Python's csv module write
when the file is such a writer's output, and refused where the two readings disagree otherwise.
A row with more or fewer fields than the header, a JSONL line
that is not an object or lacks the text field are errors naming the line.

**Fine-tuning records.** Records without the text column but with ``prompt`` and ``response``
fields, or a chat ``messages`` list (``[{"role": ..., "content": ...}, ...]`` ending with an
``assistant`` message), are prompt/response documents (supervised fine-tuning data): the text
is the prompt followed by the response (:func:`render_messages` writes a chat as plain text) and
the fields stay as columns, from which :mod:`plastiscope.downstream` builds the sequences.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data: the message names the file and the fix."""


class DuplicateKey(ValueError):
    """A JSON object names a key twice (``key``: the first such key)."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(f"the key(s) {keys} given twice in one object")
        self.key = keys[0]


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook``: a JSON object as a dict, refusing a key given twice (``json`` would keep the
    last silently) with :class:`DuplicateKey`."""
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise DuplicateKey(twice)
    return dict(pairs)


@dataclass
class Documents:
    """Texts with optional per-document columns (labels, metadata).

    ``texts[i]`` is document ``i``; ``columns[name][i]`` its value in column ``name``.
    """

    texts: list[str]
    columns: dict[str, list[Any]] = field(default_factory=dict)
    source: str = "<list>"

    def __post_init__(self) -> None:
        for name, values in self.columns.items():
            if len(values) != len(self.texts):
                raise DataError(f"{self.source}: column {name!r} has {len(values)} values for {len(self.texts)} texts")

    def __len__(self) -> int:
        return len(self.texts)

    def column(self, name: str) -> list[Any]:
        """The values of one column; a clear error names the columns there are."""
        if name not in self.columns:
            raise DataError(
                f"{self.source}: no column {name!r}; columns are {sorted(self.columns) or 'none'} "
                f"(choose one with --label-column / label_column=)"
            )
        return self.columns[name]

    def subset(self, indices: Sequence[int]) -> Documents:
        """The documents at ``indices``, in that order, with their columns."""
        return Documents(
            [self.texts[i] for i in indices],
            {k: [v[i] for i in indices] for k, v in self.columns.items()},
            self.source,
        )

    def head(self, n: int | None) -> Documents:
        """The first ``n`` documents (all of them when ``n`` is None)."""
        return self if n is None or n >= len(self) else self.subset(range(n))

    def sha256(self) -> str:
        """Content hash of texts and columns: identifies the data in caches and reports."""
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(text.encode())
            digest.update(b"\0")
        digest.update(json.dumps(self.columns, sort_keys=True, default=str).encode())
        return digest.hexdigest()


def load_documents(
    source: str | Path | Sequence[str] | Documents | Any,
    text_column: str = "text",
    label_column: str | None = None,
    max_docs: int | None = None,
) -> Documents:
    """Read documents from a file, a saved ``datasets`` folder, or a list of strings.

    ``text_column`` names the text in JSONL, CSV/TSV and datasets sources; every other
    column is kept (``label_column``, when given, must exist). Empty texts are dropped.
    """
    if isinstance(source, Documents):
        docs = source
    elif isinstance(source, (list, tuple)):
        if not all(isinstance(t, str) for t in source):
            raise DataError("<list>: a list source must hold strings, one document each")
        docs = Documents(list(source))
    elif hasattr(source, "column_names") and hasattr(source, "to_dict"):
        docs = _from_records(source.to_list(), text_column, f"<datasets.Dataset {len(source)} rows>")
    else:
        docs = _from_path(Path(source), text_column)
    keep = [i for i, t in enumerate(docs.texts) if t and t.strip()]
    if len(keep) < len(docs):
        docs = docs.subset(keep)
    if label_column is not None:
        docs.column(label_column)
    if not len(docs):
        raise DataError(f"{docs.source}: no documents (empty file or empty {text_column!r} column)")
    return docs.head(max_docs)


def _from_path(path: Path, text_column: str) -> Documents:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass a .txt, .jsonl, .csv/.tsv file or a saved datasets folder")
    if path.is_dir():
        if not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
            raise DataError(f"{path}: a folder must be a dataset saved with datasets' save_to_disk()")
        import datasets  # optional: only for saved datasets

        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            raise DataError(f"{path}: holds several splits {list(dataset)}; pass one split's folder")
        return _from_records(dataset.to_list(), text_column, str(path))
    suffix = path.suffix.lower()
    text = read_utf8(path)
    if suffix in (".jsonl", ".ndjson"):
        records, lines = [], []
        for number, line in enumerate(io.StringIO(text, newline=None), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg}); one JSON object per line") from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{path}:{number}: a JSON {type(record).__name__}, not an object; write one object per line, "
                    f"e.g. {{\"{text_column}\": \"...\"}}"
                )
            records.append(record)
            lines.append(number)
        return _from_records(records, text_column, str(path), lines)
    if suffix in (".csv", ".tsv"):
        table = read_table(path, text, delimiter="\t" if suffix == ".tsv" else ",")
        return _from_records([r for _, r in table], text_column, str(path), [n for n, _ in table])
    return Documents([line.rstrip("\n") for line in io.StringIO(text, newline=None)], source=str(path))


def read_utf8(path: Path) -> str:
    """The text of a UTF-8 file (a leading byte-order mark dropped); a byte that is not UTF-8 names its line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: byte 0x{data[err.start]:02x} is not UTF-8; re-save the file as UTF-8 "
            f"(e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix})"
        ) from None


def read_table(path: Path, text: str, delimiter: str) -> list[tuple[int, dict[str, str]]]:
    """``(line, record)`` for each row of a CSV (``delimiter=","``, RFC 4180 quoting) or a TSV (``"\\t"``).

    Every row must have as many fields as the header; blank lines are skipped. A CSV record that
    spans lines (a quoted line break) is kept with a warning naming its lines.

    A TSV has two readings: every character as it stands (the format's own rule, under which a
    stray quote merges nothing), and the quoting that pandas' ``to_csv(sep="\\t")`` and Python's
    ``csv`` module write (a field holding a quote, tab or line break wrapped in quotes, inner
    quotes doubled). Where they give the same rows there is nothing to decide. Where they differ,
    the quoted reading is taken when writing its rows back with one of those writers' quoting
    rules reproduces the file exactly (the file is such a writer's output); the literal reading
    when the quoted one is not even well formed (a stray quote); otherwise the file is refused,
    naming the first line where the two readings disagree.
    """
    if delimiter != "\t":
        return _parse_table(path, text, ",", csv.QUOTE_MINIMAL)
    if '"' not in text:  # without a quote character the two readings are one: parse once
        return _parse_table(path, text, "\t", csv.QUOTE_NONE)
    literal: list | DataError
    quoted: list | None
    try:
        literal = _parse_table(path, text, "\t", csv.QUOTE_NONE)
    except DataError as err:
        literal = err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a record spanning lines is legitimate when a writer quoted a line break
            quoted = _parse_table(path, text, "\t", csv.QUOTE_MINIMAL)
    except DataError:
        quoted = None
    if quoted is None or (not isinstance(literal, DataError) and literal == quoted):
        if isinstance(literal, DataError):
            raise literal
        return literal
    if _written_by_a_quoting_writer(text, quoted):
        return quoted
    if isinstance(literal, DataError):
        raise literal
    line = next((a[0] for a, b in zip(literal, quoted) if a != b), min(len(literal), len(quoted)) + 1)
    raise DataError(
        f"{path}:{line}: this TSV reads differently with and without quoting (a field starts with a quote that a csv "
        f"writer would not have written this way); remove the quote, quote the file consistently "
        f"(pandas' to_csv(sep='\\t') does), or save the data as JSONL"
    )


def _written_by_a_quoting_writer(text: str, rows: list[tuple[int, dict[str, str]]]) -> bool:
    """Whether writing ``rows`` back as a TSV with Python's csv quoting (minimal, all or non-numeric) gives ``text``."""
    if not rows:
        return False
    header = list(rows[0][1])
    target = text.replace("\r\n", "\n").rstrip("\n")
    for quoting in (csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC):
        out = io.StringIO()
        writer = csv.writer(out, delimiter="\t", quoting=quoting, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[record[name] for name in header] for _, record in rows])
        if out.getvalue().rstrip("\n") == target:
            return True
    return False


def _parse_table(path: Path, text: str, delimiter: str, quoting: int) -> list[tuple[int, dict[str, str]]]:
    """``(line, record)`` rows of a delimited ``text`` under one ``csv`` quoting rule (see :func:`read_table`)."""
    literal = quoting == csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True, quoting=quoting)
    fix = ("a TSV field cannot hold a tab or a line break: fix the line or save the data as JSONL" if delimiter == "\t"
           else "quote fields that hold commas, quotes or line breaks (\"a, b\")")
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    spanning: list[tuple[int, int]] = []
    end = 0
    try:
        for fields in reader:
            start, end = end + 1, reader.line_num
            if not fields or fields == [""] and header is not None:
                continue
            if header is None:
                header = fields
                if len(set(header)) < len(header):
                    raise DataError(f"{path}:{start}: the header names a column twice ({header}); give each column its own name")
                continue
            if len(fields) != len(header):
                raise DataError(f"{path}:{start}: {len(fields)} fields where the header has {len(header)}; {fix}")
            if end > start:
                spanning.append((start, end))
            rows.append((start, dict(zip(header, fields))))
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: {err}; {fix}") from None
    if spanning and not literal:
        first = spanning[0]
        warnings.warn(
            f"{path}: {len(spanning)} record(s) span several lines (the first: lines {first[0]}-{first[1]}); a quoted "
            f"field may hold line breaks, but if that is not intended, an unbalanced quote there merged rows",
            stacklevel=4,
        )
    return rows


SFT_COLUMNS = (("prompt", "response"), ("messages",))


def sft_columns(columns: Sequence[str]) -> tuple[str, ...] | None:
    """The prompt/response columns present (``("prompt", "response")`` or ``("messages",)``), or None."""
    return next((c for c in SFT_COLUMNS if all(name in columns for name in c)), None)


def render_messages(messages: Sequence[dict[str, str]]) -> tuple[str, str]:
    """``(prompt, response)`` of a chat without a chat template: ``"{role}: {content}\n"`` per earlier message,
    then ``"{role}: "`` of the last one (the prompt), and the last message's content (the response)."""
    prompt = "".join(f"{m['role']}: {m['content']}\n" for m in messages[:-1]) + f"{messages[-1]['role']}: "
    return prompt, messages[-1]["content"]


def _check_sft(record: dict[str, Any], columns: tuple[str, ...], where: str) -> str:
    """The plain text of a prompt/response or chat record (prompt then response); a clear error for a malformed one."""
    if columns == ("messages",):
        messages = record.get("messages")
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages)
        if not ok:
            raise DataError(f'{where}: "messages" must be a non-empty list of {{"role": ..., "content": ...}} objects with text values')
        if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
            raise DataError(f'{where}: the last message must be a non-empty "assistant" message (the response fine-tuning learns)')
        return "".join(render_messages(messages))
    prompt, response = record.get("prompt"), record.get("response")
    if not isinstance(prompt, str) or not isinstance(response, str) or not response.strip():
        raise DataError(f'{where}: "prompt" and "response" must be texts and the response non-empty')
    return prompt + response


def _from_records(records: list[dict[str, Any]], text_column: str, source: str, lines: Sequence[int] | None = None) -> Documents:
    names: list[str] = []
    for record in records:
        names += [k for k in record if k not in names]
    sft = sft_columns(names) if text_column not in names else None
    if sft is not None:  # prompt/response or chat records: the text is prompt + response, the columns stay
        texts = [_check_sft(r, sft, f"{source}:{lines[i]}" if lines is not None else f"{source} (row {i + 1})")
                 for i, r in enumerate(records)]
        return Documents(texts, {n: [r.get(n) for r in records] for n in names}, source)
    if records and text_column not in names:
        raise DataError(f"{source}: no text column {text_column!r}; columns are {sorted(names)} (pass --text-column / text_column=, "
                        f"or give prompt/response or chat messages fields for fine-tuning)")
    texts = []
    for i, record in enumerate(records):
        where = f"{source}:{lines[i]}" if lines is not None else f"{source} (row {i + 1})"
        if text_column not in record:
            raise DataError(f"{where}: no {text_column!r} field (fields: {sorted(record)}); add it or pass --text-column / text_column=")
        value = record[text_column]
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: the {text_column!r} field is a {type(value).__name__}, not a text")
        texts.append(value or "")
    return Documents(texts, {n: [r.get(n) for r in records] for n in names if n != text_column}, source)


def pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """Right-pad token lists: ``tokens [batch, pos]`` (int64) and ``mask [batch, pos]`` (bool, True on real tokens)."""
    import torch

    width = max(len(x) for x in ids)
    tokens = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for i, x in enumerate(ids):
        tokens[i, : len(x)] = torch.tensor(list(x), dtype=torch.long)
        mask[i, : len(x)] = True
    return tokens, mask


def encode(tokenizer: Any, text: str, max_length: int, return_offsets: bool = False) -> Any:
    """Token ids of one document under the convention: ``[BOS] + tokens``, truncated to ``max_length``.

    With ``return_offsets=True`` also returns the character span ``(start, end)`` of each
    token in ``text`` (BOS gets ``(0, 0)``), for aligning word-level labels to tokens.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if return_offsets:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = (bos + enc["input_ids"])[:max_length]
        offsets = ([(0, 0)] * len(bos) + [tuple(o) for o in enc["offset_mapping"]])[:max_length]
        return ids, offsets
    return (bos + tokenizer(text, add_special_tokens=False)["input_ids"])[:max_length]
