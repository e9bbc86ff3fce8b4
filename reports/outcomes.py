"""Outcomes a team already has (benchmark accuracies, held-out losses), imported as rows of the results schema.

An outcome is what a checkpoint is finally judged by. Besides the plasticity analysis's
``downstream_loss_after``, a team usually has its own evaluation; :func:`import_outcomes`
turns it into rows of analysis :data:`OUTCOME_ANALYSIS` so reports, ``compare`` and notebooks
see it like any metric. A source is a file or a folder of files, each either

- a table (``.csv``, ``.tsv``, ``.json`` records, ``.parquet``) with columns ``checkpoint``
  (the checkpoint's name as in the manifest, or its path), ``metric``, ``value`` and optionally
  ``higher_is_better`` and ``ci_low`` / ``ci_high`` / ``n``;
- or an lm-evaluation-harness results file (``results_*.json`` as its ``--output_path``
  writes them): every ``results[task]["METRIC,FILTER"]`` becomes metric ``task/METRIC`` (the
  filter appended as ``,FILTER`` unless it is ``none``), with the 95 % normal interval
  ``value ± 1.96 · METRIC_stderr,FILTER`` when a standard error is given, ``n`` from
  ``n-samples[task].effective`` and the direction from ``higher_is_better[task][METRIC]``.
  The file is matched to a checkpoint by a manifest column naming the file, else by the model
  recorded in ``config.model_args`` (``pretrained=PATH``) or ``model_name`` (not when
  ``model_args`` adds ``peft=`` or ``delta=`` weights: then ``pretrained`` is only the base).

A name (or path) is matched to a checkpoint by its name, else by its path (run.json records
the manifest's paths), else by the last part of the path (unless the path is a folder here
other than the checkpoint's recorded one); a name that matches no checkpoint or several is
refused, naming it. Which way is better comes from the file, else from the
metric's name (:func:`direction_from_name`: accuracy-like higher, loss-, perplexity- or
error-like lower); a metric whose name says neither or both (``loss_acc``) is refused, asking
for ``higher_is_better``. A value must be a finite number, an interval hold its value.

In a results folder the rows are stored as one cache piece per checkpoint (analysis
``outcome``, the checkpoint's content hash where the folder's pieces record it), which the
store keeps when later runs rebuild ``metrics.parquet``; importing again replaces the rows of
the same metric. Rows record the direction in :data:`BETTER_COLUMN` and the file in
:data:`SOURCE_COLUMN`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from plastiscope.data import DataError, read_utf8, unique_keys
from plastiscope.data import read_table as read_delimited
from plastiscope.results import CORE_COLUMNS, ID_COLUMNS, ResultsStore, load_results, stamp, tidy

OUTCOME_ANALYSIS = "outcome"
BETTER_COLUMN = "outcome_better"  # "higher" / "lower": which way an imported outcome is better
SOURCE_COLUMN = "outcome_source"  # the file an imported outcome came from
TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".parquet")
Z95 = 1.959963984540054  # the normal quantile of a two-sided 95 % interval
PIECE_KEY = {"outcome": "imported"}

_LOWER = ("loss", "perplexity", "ppl", "error", "nll", "bits_per_byte", "bpb", "regret", "incorrect")
_LOWER_TOKENS = ("err", "wer", "cer", "ece")
_HIGHER = ("acc", "f1", "exact_match", "bleu", "rouge", "pass@", "auc", "mcc", "win_rate", "precision", "recall", "correct")
_HIGHER_TOKENS = ("em",)


def _says(name: str, tokens: list[str], words: tuple[str, ...], exact: tuple[str, ...]) -> bool:
    """Whether a word begins or ends a token of ``name`` (a phrase with ``_`` or ``@`` may sit anywhere), or a token is ``exact``."""
    return any((w in name) if ("_" in w or "@" in w) else any(t.startswith(w) or t.endswith(w) for t in tokens) for w in words) \
        or bool(set(tokens) & set(exact))


def direction_from_name(metric: str) -> str | None:
    """``"lower"`` for loss-, perplexity- or error-like names, ``"higher"`` for accuracy-like ones, else None.

    The metric's own name is read (the part after ``task/`` and before an lm-eval ``,filter``),
    split into words at anything but letters, digits and ``@``: a word beginning or ending with
    ``loss``, ``perplexity``, ``ppl``, ``error``, ``nll``, ``bpb``, ``regret`` or ``incorrect``,
    the phrase ``bits_per_byte``, or a word ``err``/``wer``/``cer``/``ece``, mean lower is
    better; a word beginning or ending with ``acc``, ``f1``, ``bleu``, ``rouge``, ``auc``,
    ``mcc``, ``precision``, ``recall`` or ``correct``, the phrases ``exact_match``, ``pass@`` or
    ``win_rate``, or a word ``em`` mean higher is better. A name that says both (``loss_acc``,
    ``incorrect``) or neither gives None: the file must say which way is better.
    """
    name = str(metric).rsplit("/", 1)[-1].split(",", 1)[0].lower()
    tokens = [t for t in re.split(r"[^a-z0-9@]+", name) if t]
    lower = _says(name, tokens, _LOWER, _LOWER_TOKENS)
    higher = _says(name, tokens, _HIGHER, _HIGHER_TOKENS)
    if lower == higher:
        return None
    return "lower" if lower else "higher"


def _truth(value: object, where: str) -> str | None:
    """``"higher"`` / ``"lower"`` from a ``higher_is_better`` cell (bool, 0/1, true/false, higher/lower), None if empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    text = str(value).strip().lower()
    if text in ("", "nan", "none"):
        return None
    if text in ("true", "1", "1.0", "yes", "higher"):
        return "higher"
    if text in ("false", "0", "0.0", "no", "lower"):
        return "lower"
    raise ValueError(f"{where}: higher_is_better is {value!r}; write true or false")


def outcome_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """The files of ``paths`` (files, or folders searched recursively for tables and ``.json``), in a stable order."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
            if not inside:
                raise ValueError(f"--outcomes {path}: a folder without outcome files ({', '.join(TABLE_SUFFIXES)})")
            found += inside
        elif path.is_file():
            if path.suffix.lower() not in TABLE_SUFFIXES:
                raise ValueError(f"--outcomes {path}: not a table or lm-eval results file; use one of {', '.join(TABLE_SUFFIXES)}")
            found.append(path)
        else:
            raise ValueError(f"--outcomes {path}: no such file or folder")
    if not found:
        raise ValueError("--outcomes: no outcome file given")
    return list(dict.fromkeys(found))


def is_lm_eval(data: object) -> bool:
    """Whether parsed JSON is an lm-evaluation-harness results file (a ``results`` mapping of tasks to metrics)."""
    return isinstance(data, dict) and isinstance(data.get("results"), dict) and ("config" in data or "model_name" in data)


def lm_eval_rows(data: dict, path: Path) -> pd.DataFrame:
    """The metrics of one lm-evaluation-harness results file: metric, value, ci_low, ci_high, n, better.

    ``results[task]["acc,none"] = v`` with ``results[task]["acc_stderr,none"] = s`` gives metric
    ``task/acc``, value ``v`` and the interval ``v ± 1.96 s`` (a stderr of ``"N/A"`` gives none).
    """
    rows = []
    directions = data.get("higher_is_better") or {}
    samples = data.get("n-samples") or {}
    for task, metrics in data["results"].items():
        if not isinstance(metrics, dict):
            continue
        for key, value in metrics.items():
            name, _, filt = str(key).partition(",")
            if key == "alias" or "_stderr" in name or (not filt and not isinstance(value, (int, float))) or not name.strip():
                continue  # labels lm-eval keeps beside the metrics (alias, a group's blank heading)
            where = f"--outcomes {path}: results.{task}[{key!r}]"
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{where} is {value!r}, not a finite number; rerun that task or delete the key from the file")
            stderr = metrics.get(f"{name}_stderr,{filt}" if filt else f"{name}_stderr")
            stderr = float(stderr) if isinstance(stderr, (int, float)) and not isinstance(stderr, bool) else math.nan
            if stderr < 0 or math.isinf(stderr):
                raise ValueError(f"{where}: its standard error is {stderr!r}; a standard error is finite and at least 0 (or \"N/A\")")
            metric = f"{task}/{name}" + (f",{filt}" if filt and filt != "none" else "")
            declared = (directions.get(task) or {}).get(name) if isinstance(directions.get(task), dict) else None
            better = _truth(declared, f"{path}: higher_is_better.{task}.{name}") if declared is not None else None
            effective = (samples.get(task) or {}).get("effective") if isinstance(samples.get(task), dict) else None
            if effective is not None and (isinstance(effective, bool) or not isinstance(effective, int) or effective < 1):
                raise ValueError(f"--outcomes {path}: n-samples.{task}.effective is {effective!r}; a count of at least 1, or no entry")
            rows.append({"metric": metric, "value": float(value), "ci_low": float(value) - Z95 * stderr,
                         "ci_high": float(value) + Z95 * stderr, "n": effective, "better": better})
    if not rows:
        raise ValueError(f"--outcomes {path}: an lm-eval results file without numeric metrics under 'results'")
    return pd.DataFrame(rows)


def _model_args(data: dict) -> dict[str, str]:
    """``config.model_args`` of an lm-eval results file as a mapping (it is a mapping or ``key=value,key=value`` text)."""
    args = (data.get("config") or {}).get("model_args") if isinstance(data.get("config"), dict) else None
    if isinstance(args, dict):
        return {str(k): str(v) for k, v in args.items() if v is not None}
    parts = [part.partition("=") for part in args.split(",")] if isinstance(args, str) else []
    return {key.strip(): value.strip() for key, sep, value in parts if sep}


def lm_eval_models(data: dict) -> list[str]:
    """What an lm-eval results file says was evaluated: ``pretrained=`` of ``config.model_args``, then ``model_name``."""
    names = [_model_args(data).get("pretrained"), data.get("model_name")]
    return list(dict.fromkeys(str(n) for n in names if n))


def lm_eval_adapter(data: dict) -> str | None:
    """``peft=`` or ``delta=`` of ``config.model_args``: weights lm-eval added on top of ``pretrained`` (not that model)."""
    args = _model_args(data)
    return next((f"{key}={args[key]}" for key in ("peft", "delta") if args.get(key)), None)


def read_json(path: Path) -> object:
    """A ``.json`` outcome file parsed, or a one-line refusal naming it (not UTF-8, not JSON, a key twice, nested too deep)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique_keys)
    except UnicodeDecodeError:
        raise ValueError(f"--outcomes {path}: not UTF-8 text; save it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"--outcomes {path}: not valid JSON ({err.msg} at line {err.lineno}); fix or remove the file") from None
    except RecursionError:
        raise ValueError(f"--outcomes {path}: JSON nested too deep to be an outcome file; remove it from --outcomes") from None
    except ValueError as err:
        raise ValueError(f"--outcomes {path}: {err}; keep one") from None


def _numbers(frame: pd.DataFrame, column: str, path: Path, where: list[str]) -> pd.Series:
    """``frame[column]`` as floats; a cell that is no number (text, a yes/no) is refused naming its row; blanks are NaN."""
    cells = frame[column]
    is_bool = cells.map(lambda v: isinstance(v, (bool, np.bool_)))
    numbers = pd.to_numeric(cells.where(~is_bool), errors="coerce").astype(float)
    text = cells.map(lambda v: isinstance(v, str) and v.strip().lower() in ("", "nan", "na", "n/a", "none", "null"))
    bad = numbers.isna() & cells.notna() & ~text
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"--outcomes {path}, {where[i]}: {column} is {str(cells.iloc[i])!r}, not a number; write a plain number")
    return numbers


def _read_rows(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The table of an outcome file as read, and where each row is in the file (``line 3``, ``record 2``, ``row 1``).

    CSV and TSV are read as documents are (:func:`plastiscope.data.read_table`: UTF-8, RFC 4180
    quoting, a row with more or fewer fields than the header refused naming its line).
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow's errors for a file that is not parquet
            raise ValueError(f"--outcomes {path}: not a readable parquet file ({type(err).__name__}); re-write it with "
                             "DataFrame.to_parquet or use a .csv") from None
        return frame, [f"row {i + 1}" for i in range(len(frame))]
    if suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"--outcomes {path}: neither an outcome table (a JSON list of records with checkpoint, metric, value) "
                             "nor an lm-eval results file; remove it from --outcomes (or name the files to import)")
        return pd.DataFrame(data), [f"record {i + 1}" for i in range(len(data))]
    try:
        text = read_utf8(path)
    except DataError:
        raise ValueError(f"--outcomes {path}: not UTF-8 text; save it as UTF-8") from None
    if not text.strip():
        raise ValueError(f"--outcomes {path}: an empty file; write the header checkpoint,metric,value and one row per outcome")
    rows = read_delimited(path, text, "\t" if suffix == ".tsv" else ",")
    if not rows:
        raise ValueError(f"--outcomes {path}: a table without rows; add one row per checkpoint and metric")
    return pd.DataFrame([record for _, record in rows]), [f"line {line}" for line, _ in rows]


def read_table(path: Path) -> pd.DataFrame:
    """An outcome table: columns checkpoint, metric, value (+ higher_is_better, ci_low, ci_high, n).

    Refused, naming the file and row: a value that is missing, not a number or not finite; an
    interval given on one side only, or not holding the value; an ``n`` that is not a positive
    whole number; a blank checkpoint or metric; a table without rows; a column (or JSON key) given twice.
    """
    frame, where = _read_rows(path)
    missing = [c for c in ("checkpoint", "metric", "value") if c not in frame.columns]
    if missing:
        raise ValueError(f"--outcomes {path}: no column(s) {missing}; an outcome table has checkpoint, metric, value "
                         f"(and optionally higher_is_better, ci_low, ci_high, n); it has {list(frame.columns)}")
    if frame.empty:
        raise ValueError(f"--outcomes {path}: a table without rows; add one row per checkpoint and metric")
    frame = frame.reset_index(drop=True)
    for column in ("checkpoint", "metric"):
        names = frame[column].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip())
        if (names == "").any():
            i = int(np.flatnonzero((names == "").to_numpy())[0])
            raise ValueError(f"--outcomes {path}, {where[i]}: no {column}; fill it in or delete the row")
        frame[column] = names
    out = pd.DataFrame({"checkpoint": frame["checkpoint"], "metric": frame["metric"], "value": _numbers(frame, "value", path, where)})
    for column in ("ci_low", "ci_high", "n"):
        out[column] = _numbers(frame, column, path, where) if column in frame else math.nan
    value, low, high, n = out["value"], out["ci_low"], out["ci_high"], out["n"]
    checks = [
        (~np.isfinite(value), "value is {value}; an outcome is a finite number (delete the row if it was not measured)"),
        (low.isna() != high.isna(), "an interval needs both ci_low and ci_high; give both or neither"),
        (np.isinf(low) | np.isinf(high), "the interval [{ci_low}, {ci_high}] is not finite; give finite bounds or none"),
        ((low > value) | (high < value), "the interval [{ci_low}, {ci_high}] does not hold the value {value}; ci_low <= value <= ci_high"),
        (n.notna() & ((n < 1) | (n != np.floor(n)) | np.isinf(n)), "n is {n}; n counts independent units, a whole number of at least 1"),
    ]
    for bad, reason in checks:
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"--outcomes {path}, {where[i]} ({out['checkpoint'].iloc[i]} {out['metric'].iloc[i]}): "
                             + reason.format(**out.iloc[i].to_dict()))
    out["better"] = [_truth(v, f"--outcomes {path}, metric {m}") for v, m in
                     zip(frame["higher_is_better"] if "higher_is_better" in frame else [None] * len(frame), out["metric"])]
    return out


def _tail_matches(reference: str, path: Path) -> bool:
    """Whether ``path`` is the file ``reference`` names (the same file, or ``path`` ends with the relative ``reference``)."""
    ref = Path(reference).expanduser()
    try:
        if ref.is_absolute() or ref.exists():
            return ref.resolve() == path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a link loop (Python < 3.13)
        return False
    parts = [p for p in ref.parts if p not in (".", "")]
    return bool(parts) and list(path.resolve().parts[-len(parts):]) == parts


def candidates(reference: str, checkpoints: pd.DataFrame) -> list[str]:
    """Checkpoint names ``reference`` may mean: by name, else by path, else by the last part of the path.

    The last part does not match a checkpoint whose recorded folder exists here when ``reference``
    is another folder that exists here (another model of that name, e.g. an earlier sweep's).
    """
    names = checkpoints["checkpoint"].astype(str)
    exact = names[names == reference].tolist()
    if exact:
        return list(dict.fromkeys(exact))
    if "path" in checkpoints:
        paths = checkpoints["path"]
        ref = Path(reference).expanduser()
        same = [n for n, p in zip(names, paths) if isinstance(p, str) and p and p not in ("None", "nan")
                and (p == reference or _same_path(p, ref))]
        if same:
            return list(dict.fromkeys(same))
    tail = Path(reference.rstrip("/")).name
    paths = checkpoints["path"] if "path" in checkpoints else [None] * len(names)
    by_tail = [n for n, p in zip(names, paths) if n == tail or (isinstance(p, str) and p and Path(p.rstrip("/")).name == tail)]
    # a folder that exists here and is not the checkpoint's recorded folder (which exists too) is another model of that name
    ref, here = Path(reference).expanduser(), _is_dir(reference)
    elsewhere = {n for n, p in zip(names, paths) if here and isinstance(p, str) and _is_dir(p) and not _same_path(p, ref)}
    return [n for n in dict.fromkeys(by_tail) if n not in elsewhere]


def _is_dir(path: str) -> bool:
    try:
        return Path(path).expanduser().is_dir()
    except (OSError, RuntimeError):  # RuntimeError: a link loop (Python < 3.13)
        return False


def _same_path(a: str, b: Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == b.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a link loop (Python < 3.13)
        return False


def _one(reference: str, checkpoints: pd.DataFrame, where: str, unmatched: list[str], ambiguous: list[str]) -> str | None:
    found = candidates(reference, checkpoints)
    if not found:
        unmatched.append(f"{reference!r} ({where})")
    elif len(found) > 1:
        ambiguous.append(f"{reference!r} ({where}: {', '.join(found[:4])})")
    return found[0] if len(found) == 1 else None


def _lm_eval_checkpoint(data: dict, path: Path, checkpoints: pd.DataFrame, unmatched: list[str], ambiguous: list[str]) -> str | None:
    """The checkpoint an lm-eval file belongs to: a manifest column naming the file, else the model it records."""
    named = []
    for row in checkpoints.to_dict("records"):
        for column, value in row.items():
            if column in ("checkpoint", "path") or not isinstance(value, str) or not value.lower().endswith(".json"):
                continue
            if _tail_matches(value, path):
                named.append(str(row["checkpoint"]))
    named = list(dict.fromkeys(named))
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        ambiguous.append(f"{str(path)!r} (named by the manifest of {', '.join(named[:4])})")
        return None
    adapter = lm_eval_adapter(data)
    if adapter:  # pretrained= names the base model, not the model evaluated
        unmatched.append(f"{str(path)!r} (evaluates {adapter} on top of {', '.join(lm_eval_models(data)) or 'its base'}; name the file "
                         "in a manifest column of its checkpoint)")
        return None
    models = lm_eval_models(data)
    if not models:
        unmatched.append(f"{str(path)!r} (records no model_args pretrained= or model_name)")
        return None
    tried: list[str] = []
    for model in models:
        found = candidates(model, checkpoints)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            ambiguous.append(f"{model!r} ({path}: {', '.join(found[:4])})")
            return None
        tried.append(model)
    unmatched.append(f"{' / '.join(repr(t) for t in tried)} ({path})")
    return None


def read_outcomes(paths: str | Path | Iterable[str | Path], checkpoints: pd.DataFrame) -> pd.DataFrame:
    """Outcome rows of ``paths`` matched to ``checkpoints`` (columns ``checkpoint``, optionally ``path`` and others).

    Returns columns checkpoint, metric, value, ci_low, ci_high, n, better, source. Refuses (one
    message naming every case) names that match no checkpoint or several, a metric whose
    direction is neither in the file nor in its name, and one (checkpoint, metric) given twice.
    """
    parts, unmatched, ambiguous = [], [], []
    for path in outcome_files(paths):
        data = read_json(path) if path.suffix.lower() == ".json" else None
        if data is not None and is_lm_eval(data):
            rows = lm_eval_rows(data, path)
            name = _lm_eval_checkpoint(data, path, checkpoints, unmatched, ambiguous)
            rows.insert(0, "checkpoint", name)
        else:
            rows = read_table(path)
            rows["checkpoint"] = [_one(ref, checkpoints, str(path), unmatched, ambiguous) for ref in rows["checkpoint"]]
        rows["source"] = path.name
        parts.append(rows)
    problems = []
    if unmatched:
        problems.append(f"no checkpoint matches {', '.join(dict.fromkeys(unmatched))}")
    if ambiguous:
        problems.append(f"several checkpoints match {', '.join(dict.fromkeys(ambiguous))}")
    if problems:
        known = ", ".join(checkpoints["checkpoint"].astype(str).tolist()[:8])
        raise ValueError(f"--outcomes: {'; '.join(problems)}; the results' checkpoints are {known}: name each as in the manifest "
                         "(or by its path)")
    frame = pd.concat(parts, ignore_index=True)
    undirected = sorted(frame.loc[frame["better"].isna(), "metric"].unique())
    if undirected:
        frame["better"] = frame["better"].fillna(frame["metric"].map(direction_from_name))
        still = sorted(frame.loc[frame["better"].isna(), "metric"].unique())
        if still:
            raise ValueError(f"--outcomes: cannot tell whether higher or lower is better for {still}; add a higher_is_better "
                             "column (true or false) to the outcome table")
    conflict = frame.groupby("metric")["better"].nunique()
    if (conflict > 1).any():
        raise ValueError(f"--outcomes: metric(s) {conflict.index[conflict > 1].tolist()} marked both higher and lower is better")
    twice = frame.duplicated(["checkpoint", "metric"], keep=False)
    if twice.any():
        pairs = frame[twice].groupby(["checkpoint", "metric"], sort=False)["source"].agg(lambda s: " and ".join(dict.fromkeys(s)))
        raise ValueError(f"--outcomes: given twice: {', '.join(f'{c} {m} (in {f})' for (c, m), f in list(pairs.items())[:4])}; "
                         "keep one value per checkpoint and metric")
    return frame


def known_checkpoints(results: pd.DataFrame, folder: Path | None = None) -> pd.DataFrame:
    """One row per checkpoint of ``results`` (its identity columns), with ``path`` from the folder's run.json where recorded."""
    identity = identity_columns(results)
    table = results.drop_duplicates("checkpoint")[identity].reset_index(drop=True)
    table["checkpoint"] = table["checkpoint"].astype(str)
    if folder is not None and (folder / "run.json").exists():
        try:
            recorded = pd.DataFrame(json.loads((folder / "run.json").read_text()).get("checkpoints") or [])
        except (ValueError, AttributeError, TypeError, RecursionError):  # not a run.json analyze wrote: no paths recorded
            recorded = pd.DataFrame()
        if "checkpoint" in recorded:
            recorded = recorded.drop_duplicates("checkpoint").set_index("checkpoint")
            for column in recorded.columns:
                if column not in table:
                    table[column] = table["checkpoint"].map(recorded[column])
    return table


def identity_columns(results: pd.DataFrame) -> list[str]:
    """The columns that have one value per checkpoint (name, weight decay, hyperparameters), not the schema's or an outcome's."""
    own = set(CORE_COLUMNS) | {BETTER_COLUMN, SOURCE_COLUMN}
    columns = []
    grouped = results.groupby("checkpoint", sort=False)
    for column in results.columns:
        if column in ID_COLUMNS:
            columns.append(column)
        elif column not in own and not column.startswith("_") and grouped[column].nunique(dropna=False).max() <= 1:
            columns.append(column)
    return columns


def outcome_frame(outcomes: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Rows of the results schema (analysis ``outcome``) for matched outcome rows, stamped with each checkpoint's identity."""
    identity = identity_columns(results)
    first = results.drop_duplicates("checkpoint").set_index(results.drop_duplicates("checkpoint")["checkpoint"].astype(str))
    parts = []
    for name, rows in outcomes.groupby("checkpoint", sort=False):
        piece = pd.DataFrame({"analysis": OUTCOME_ANALYSIS, "metric": rows["metric"].to_numpy(), "variant": "",
                              "value": rows["value"].to_numpy(float), "ci_low": rows["ci_low"].to_numpy(float),
                              "ci_high": rows["ci_high"].to_numpy(float), "n": rows["n"].to_numpy(),
                              BETTER_COLUMN: rows["better"].to_numpy(object), SOURCE_COLUMN: rows["source"].to_numpy(object)})
        parts.append(stamp(piece, {c: first.loc[name, c] for c in identity}))
    return tidy(pd.concat(parts, ignore_index=True))


def add_outcomes(results: pd.DataFrame, paths: str | Path | Sequence[str | Path], folder: Path | None = None) -> pd.DataFrame:
    """``results`` with the outcomes of ``paths`` added (an imported metric given again replaces the old rows)."""
    matched = read_outcomes(paths, known_checkpoints(results, folder))
    new = outcome_frame(matched, results)
    old = (results["analysis"] == OUTCOME_ANALYSIS) & results.set_index(["checkpoint", "metric"]).index.isin(
        new.set_index(["checkpoint", "metric"]).index)
    kept = results[(results["analysis"] == OUTCOME_ANALYSIS) & ~old]
    if len(kept) and BETTER_COLUMN in kept:
        before = kept.groupby("metric")[BETTER_COLUMN].first()
        now = new.groupby("metric")[BETTER_COLUMN].first()
        flipped = [m for m in now.index if m in before.index and before[m] != now[m]]
        if flipped:
            m = flipped[0]
            others = ", ".join(kept.loc[kept["metric"] == m, "checkpoint"].astype(str).tolist()[:4])
            raise ValueError(f"--outcomes: metric {m!r} is imported as {now[m]} is better, but the results already hold it as {before[m]} "
                             f"is better for {others}; import every checkpoint of it again with one direction")
    combined = tidy(pd.concat([results[~old], new], ignore_index=True))
    combined.attrs.update(results.attrs)  # what the results record beside their rows (metric declarations)
    return combined


def _piece_hashes(store: ResultsStore) -> dict[str, tuple[float, str]]:
    """Checkpoint name -> (time written, content hash) of its latest piece in the folder."""
    hashes: dict[str, tuple[float, str]] = {}
    for _, meta in store.pieces():
        name, written = str(meta["identity"]["checkpoint"]), float(meta.get("written", 0.0))
        if meta.get("analysis") != OUTCOME_ANALYSIS and (name not in hashes or written > hashes[name][0]):
            hashes[name] = (written, meta["checkpoint_hash"])
    return hashes


def import_outcomes(folder: str | Path, paths: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """Import outcomes into a results folder: one cache piece per checkpoint, and ``metrics.parquet`` with them; returns it.

    The pieces carry the checkpoint's content hash (from the folder's other pieces; a hash of
    its name where none is recorded) so a later ``analyze`` into the folder keeps them.
    """
    folder = Path(folder)
    results = load_results(folder)
    combined = add_outcomes(results, paths, folder)
    store = ResultsStore(folder)
    hashes = _piece_hashes(store)
    imported = combined[combined["analysis"] == OUTCOME_ANALYSIS]
    identity = identity_columns(results)
    for name, piece in imported.groupby("checkpoint", sort=False):
        content = hashes.get(str(name), (0.0, hashlib.sha256(f"checkpoint name {name}".encode()).hexdigest()))[1]
        ident = {c: piece[c].iloc[0] for c in identity}
        store.put(OUTCOME_ANALYSIS, content, PIECE_KEY, piece.reset_index(drop=True), identity=ident)
    store.write(combined)
    return combined
