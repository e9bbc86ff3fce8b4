"""The embedded corpus: every gloss of WordNet 3.0, labelled, shipped compressed in the package.

Each document is one synset's gloss (definition and examples) with columns ``pos`` (part of
speech: noun, verb, adj, adv), ``lexname`` (lexicographer file, e.g. ``noun.animal``: 45
classes), ``topic`` (the lexicographer file without its part of speech, e.g. ``animal``) and
``lemma``. Splits (fixed by hash, see ``scripts/build_corpus.py``):
``train`` (pretraining), ``validation``, ``probe`` (probing tasks), ``finetune`` (a held-out
domain: food, plant and weather glosses, never seen in pretraining). WordNet 3.0 license:
``LICENSE-WordNet`` beside this file. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from plastiscope.data import Documents

CORPUS_FILE = Path(__file__).with_name("wordnet_glosses.jsonl.gz")
SPLITS = ("train", "validation", "probe", "finetune")


@lru_cache(maxsize=1)
def _rows() -> tuple[dict, ...]:
    with gzip.open(CORPUS_FILE, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f)


def load_corpus(split: str = "train", max_docs: int | None = None) -> Documents:
    """Documents of one split, in a fixed order, with columns ``pos``, ``lexname``, ``topic``, ``lemma``."""
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; choose from {', '.join(SPLITS)}")
    rows = [r for r in _rows() if r["split"] == split][:max_docs]
    return Documents(
        [r["text"] for r in rows],
        {**{k: [r[k] for r in rows] for k in ("pos", "lexname", "lemma")},
         "topic": [r["lexname"].split(".")[-1] for r in rows]},
        source=f"embedded WordNet 3.0 glosses ({split})",
    )
