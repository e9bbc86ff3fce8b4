"""Sweeps: sequences of checkpoints read from a manifest, discovered in a folder, or taken from
the revisions of one repository in the Hugging Face cache.

A checkpoint that cannot be built is not fatal: it becomes a row of :attr:`Sweep.errors`
(reported as a failure, skipped), and the others still run.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from plastiscope.checkpoint import Checkpoint
from plastiscope.loading import CheckpointError, hf_cache_dir, is_nan, read_hyperparameters, weight_files


class Sweep(Sequence[Checkpoint]):
    """A sequence of checkpoints; ``errors`` keeps those that could not be built (reported, skipped)."""

    def __init__(self, checkpoints: Sequence[Checkpoint], errors: Sequence[dict[str, Any]] = ()):
        self.checkpoints = list(checkpoints)
        self.errors = list(errors)
        names = [c.name for c in self.checkpoints]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise CheckpointError(f"several checkpoints are named {dupes}; give each a distinct label (a 'label' column)")
        folders: dict[Path, str] = {}
        weights: dict[Path, str] = {}  # the file a weights link leads to -> the checkpoint that loads it
        for c in self.checkpoints:
            if c.path is None:
                continue
            folder = Path(c.path).resolve()
            if folder in folders:
                raise CheckpointError(
                    f"checkpoints {folders[folder]!r} and {c.name!r} are the same checkpoint folder {folder} (one model at two "
                    f"sets of hyperparameters); list each checkpoint once"
                )
            folders[folder] = c.name
            try:
                files = weight_files(Path(c.path))
            except CheckpointError:
                continue  # reported when the checkpoint loads
            for file in files:
                real = file.resolve()
                if weights.setdefault(real, c.name) != c.name:
                    raise CheckpointError(
                        f"checkpoints {weights[real]!r} and {c.name!r} load the same weights file {real} ({file} links to it: one "
                        f"model at two sets of hyperparameters); give each checkpoint folder its own weights"
                    )

    def __len__(self) -> int:
        return len(self.checkpoints)

    def __iter__(self) -> Iterator[Checkpoint]:
        return iter(self.checkpoints)

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, slice):
            return Sweep(self.checkpoints[key])
        if isinstance(key, str):
            for c in self.checkpoints:
                if c.name == key:
                    return c
            raise KeyError(f"no checkpoint named {key!r}; names are {[c.name for c in self.checkpoints]}")
        return self.checkpoints[key]

    def __repr__(self) -> str:
        return f"Sweep({len(self)} checkpoints, weight decays {sorted({c.weight_decay for c in self})}" + (
            f", {len(self.errors)} skipped)" if self.errors else ")"
        )

    def filter(self, predicate: Callable[[Checkpoint], bool] | None = None, **criteria: Any) -> Sweep:
        """Checkpoints matching every ``hyperparameter=value`` (a value, a list of values, or a predicate)."""

        def keep(c: Checkpoint) -> bool:
            if predicate is not None and not predicate(c):
                return False
            for key, want in criteria.items():
                have = c.hyperparameters.get(key)
                if callable(want):
                    if not want(have):
                        return False
                elif isinstance(want, (list, tuple, set)):
                    if have not in want:
                        return False
                elif have != want:
                    return False
            return True

        return Sweep([c for c in self if keep(c)])

    def to_frame(self) -> pd.DataFrame:
        """One row per checkpoint: name, path and hyperparameters."""
        return pd.DataFrame(
            [{"checkpoint": c.name, "path": str(c.path) if c.path else None, **c.hyperparameters} for c in self]
        )

    def to(self, device: str | None = None, dtype: str | torch.dtype | None = None, device_map: str | dict | None = None) -> Sweep:
        """Set device / precision of every checkpoint (see :meth:`Checkpoint.to`)."""
        for checkpoint in self:
            checkpoint.to(device, dtype, device_map)
        return self

    def load_errors(self) -> list[dict[str, Any]]:
        """Failure rows (checkpoint, path, analysis, error) of the checkpoints that could not be built, as copies."""
        return [dict(e) for e in self.errors]

    @classmethod
    def from_hf_cache(
        cls,
        repo: str,
        revisions: Sequence[str] = ("main",),
        cache_dir: str | Path | None = None,
        labels: Sequence[str] | None = None,
        **hyperparameters: Any,
    ) -> Sweep:
        """Revisions of one repository in the local Hugging Face hub cache, e.g. Pythia's training steps::

            Sweep.from_hf_cache("EleutherAI/pythia-160m", revisions=["step1000", "step143000"], weight_decay=0.01)

        Each revision is a :meth:`Checkpoint.from_hf_cache` named ``repo@revision`` (or its
        entry of ``labels``); ``hyperparameters`` (``weight_decay`` required) apply to all. A
        revision that is not in the cache is reported in ``errors``; the others still load.
        """
        if isinstance(revisions, str):
            revisions = [revisions]
        if labels is not None and len(labels) != len(revisions):
            raise CheckpointError(f"{repo}: {len(labels)} labels for {len(revisions)} revisions; give one label per revision")
        checkpoints, errors = [], []
        for i, revision in enumerate(revisions):
            hyper = dict(hyperparameters)
            if labels is not None:
                hyper["label"] = labels[i]
            try:
                checkpoints.append(Checkpoint.from_hf_cache(repo, revision, cache_dir, **hyper))
            except CheckpointError as err:
                errors.append({"checkpoint": hyper.get("label") or f"{repo}@{revision}", "path": str(hf_cache_dir(cache_dir)),
                               "analysis": "load", "error": str(err)})
        return cls(checkpoints, errors)

    @classmethod
    def from_manifest(cls, path: str | Path) -> Sweep:
        """A CSV, JSON or YAML manifest: one row per checkpoint with ``path`` (a model folder, relative to the
        manifest) or ``repo`` and ``revision`` (the Hugging Face cache; optional ``cache_dir``), ``weight_decay``
        and any metadata."""
        path = Path(path)
        rows = read_manifest(path)
        checkpoints, errors = [], []
        for number, row in enumerate(rows, 1):
            row = {k: v for k, v in row.items() if v not in (None, "") and not is_nan(v)}
            if ("path" in row) == ("repo" in row):
                what = "both 'path' and 'repo'" if "path" in row else "no 'path' (nor 'repo')"
                errors.append({"checkpoint": f"row {number}", "path": str(path), "analysis": "load",
                               "error": f"{path}: row {number} has {what}; give each row either the checkpoint folder "
                                        f"(path) or a Hugging Face cache repository and revision (repo, revision)"})
                continue
            odd = [k for k, v in row.items() if not isinstance(k, str) or not isinstance(v, (str, int, float, bool))]
            if odd:
                label = row.get("label") if isinstance(row.get("label"), (str, int, float)) else f"row {number}"
                errors.append({"checkpoint": str(label), "path": str(path), "analysis": "load",
                               "error": f"{path}: row {number}: column {odd[0]!r} holds a {type(row[odd[0]]).__name__}; "
                                        f"a manifest cell is one number or text"})
                continue
            hyper = {k: _number(v) for k, v in row.items() if k not in ("path", "repo", "revision", "cache_dir")}
            try:
                if "repo" in row:
                    cache = row.get("cache_dir")
                    cache = path.parent / Path(str(cache)).expanduser() if cache is not None else None
                    where = str(hf_cache_dir(cache))
                    checkpoints.append(Checkpoint.from_hf_cache(str(row["repo"]), str(row.get("revision", "main")), cache, **hyper))
                else:
                    where = str(path.parent / str(row["path"]))
                    try:
                        folder = Path(where).resolve()
                    except (RuntimeError, OSError) as err:  # a link that leads back to itself
                        raise CheckpointError(f"{where}: the path does not resolve ({err}); fix the path in the manifest") from None
                    where = str(folder)
                    checkpoints.append(Checkpoint.from_pretrained(folder, **hyper))
            except CheckpointError as err:
                fallback = f"{row['repo']}@{row.get('revision', 'main')}" if "repo" in row else Path(where).name
                errors.append({"checkpoint": row.get("label", fallback), "path": where, "analysis": "load", "error": str(err)})
        if not checkpoints and not errors:
            raise CheckpointError(f"{path}: the manifest lists no checkpoints; add one row per checkpoint (path, weight_decay)")
        return cls(checkpoints, errors)

    @classmethod
    def from_directory(cls, path: str | Path) -> Sweep:
        """Every model folder below ``path`` (up to two levels), hyperparameters from the trainers' JSON files."""
        root = Path(path)
        if not root.is_dir():
            raise CheckpointError(f"{root}: no such folder; pass the folder that holds the checkpoint folders")
        candidates = [root] if (root / "config.json").exists() else []
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            if (sub / "config.json").exists() or any(sub.glob("*.safetensors")):
                candidates.append(sub)
            else:
                candidates += sorted(
                    q for q in sub.iterdir() if q.is_dir() and ((q / "config.json").exists() or any(q.glob("*.safetensors")))
                )
        if not candidates:
            raise CheckpointError(f"{root}: no model folders found (folders with config.json); pass the sweep folder or a manifest")
        checkpoints, errors = [], []
        for folder in candidates:
            try:
                name = folder.name if folder.parent == root or folder == root else f"{folder.parent.name}/{folder.name}"
                hyper = read_hyperparameters(folder)
                checkpoints.append(Checkpoint.from_pretrained(folder, name=None if hyper.get("label") else name))
            except CheckpointError as err:
                errors.append({"checkpoint": folder.name, "path": str(folder), "analysis": "load", "error": str(err)})
        return cls(checkpoints, errors)


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV, JSON or YAML manifest, one dict per checkpoint; syntax errors name the line."""
    from plastiscope.data import DataError, DuplicateKey, read_table, read_utf8, unique_keys

    if not path.exists():
        raise CheckpointError(f"{path}: no such manifest; pass a .csv, .json or .yaml file (or a sweep folder)")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file; pass a .csv, .json or .yaml manifest")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json", ".yaml", ".yml"):
        raise CheckpointError(f"{path}: unknown manifest type {suffix!r}; use .csv, .json or .yaml")
    try:
        text = read_utf8(path)
        if suffix == ".csv":
            return [record for _, record in read_table(path, text, delimiter=",")]
    except DataError as err:
        raise CheckpointError(str(err)) from None
    if suffix == ".json":
        try:
            data = json.loads(text, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}:{err.lineno}: the manifest is not valid JSON ({err.msg}); fix its syntax") from None
        except RecursionError:
            raise CheckpointError(f"{path}: the manifest nests deeper than a JSON parser follows; a manifest is a list of rows") from None
        except DuplicateKey as err:
            raise CheckpointError(f"{path}: a row names the column {err.key!r} twice (one value would be lost); give it once") from None
    else:
        import yaml

        try:
            data = yaml.load(io.StringIO(text), Loader=_unique_key_loader())  # a SafeLoader
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise CheckpointError(f"{path}{line}: the manifest is not valid YAML ({problem}); fix its syntax") from None
        except RecursionError:
            raise CheckpointError(f"{path}: the manifest nests deeper than a YAML parser follows; a manifest is a list of rows") from None
    if isinstance(data, dict):
        data = data.get("checkpoints", data)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise CheckpointError(f"{path}: a manifest is a list of rows (or {{'checkpoints': [...]}}), each with path and weight_decay")
    return data


def _number(value: Any) -> Any:
    """CSV cells are strings: turn numbers back into numbers."""
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def _unique_key_loader() -> Any:
    """PyYAML's SafeLoader refusing a mapping key given twice (it would keep the last silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen = []
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"the column {key!r} is given twice in a row",
                                                            key_node.start_mark)
                seen.append(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader

