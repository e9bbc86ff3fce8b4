"""Build the embedded corpus shipped in ``plastiscope/demo/corpus/`` from WordNet 3.0.

Run once by maintainers, never at run time::

    apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb /tmp/wn
    python scripts/build_corpus.py /tmp/wn/usr/share/wordnet

Every synset of WordNet 3.0 becomes one document: its gloss (definition and
examples), labelled with its part of speech and lexicographer file. The split is
fixed by a hash of the synset id, so it never changes between runs:

- ``finetune``: all glosses of three held-out lexicographer files (a held-out
  domain for plasticity experiments: food, plants, weather verbs);
- of the rest, by hash: 80 % ``train``, 8 % ``validation``, 12 % ``probe``.

Documents are stored in an order fixed by a hash of the synset id, so the first N
documents of any split are a mix of every part of speech and lexicographer file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sys
from pathlib import Path

LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
POS = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
FINETUNE_LEXNAMES = {"noun.food", "noun.plant", "verb.weather"}
OUT = Path(__file__).resolve().parents[1] / "plastiscope" / "demo" / "corpus"


def split_of(synset_id: str, lexname: str) -> str:
    if lexname in FINETUNE_LEXNAMES:
        return "finetune"
    bucket = int(hashlib.sha256(synset_id.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 80 else "validation" if bucket < 88 else "probe"


def parse(wordnet_dir: Path):
    for name in ("noun", "verb", "adj", "adv"):
        for line in (wordnet_dir / f"data.{name}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # license header
            fields, gloss = line.split(" | ", 1)
            offset, lex_filenum, ss_type, w_cnt, *rest = fields.split()
            lemma = rest[0].replace("_", " ")
            lexname = LEXNAMES[int(lex_filenum)]
            synset_id = f"{offset}-{ss_type}"
            yield {
                "id": synset_id,
                "split": split_of(synset_id, lexname),
                "text": gloss.strip(),
                "pos": POS[ss_type],
                "lexname": lexname,
                "lemma": lemma,
            }


def main(wordnet_dir: str) -> None:
    # a fixed pseudo-random order, so that the first N documents of a split mix all classes
    rows = sorted(parse(Path(wordnet_dir)), key=lambda r: hashlib.sha256(r.pop("id").encode()).hexdigest())
    with gzip.GzipFile(OUT / "wordnet_glosses.jsonl.gz", "wb", mtime=0) as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
    shutil.copy(Path(wordnet_dir).parent / "doc" / "wordnet-base" / "copyright", OUT / "LICENSE-WordNet")
    counts = {}
    for row in rows:
        counts[row["split"]] = counts.get(row["split"], 0) + 1
    print(len(rows), "glosses", counts)


if __name__ == "__main__":
    main(sys.argv[1])
