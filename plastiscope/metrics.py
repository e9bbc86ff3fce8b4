"""Declared metrics: what each metric means, where it is computed, and what it is compared with.

Every analysis declares its metrics next to its options, one :class:`Metric` per name::

    METRICS = (
        Metric("accuracy", "Held-out accuracy of a linear probe ...", unit="fraction", better="higher",
               citation="Alain & Bengio 2016 (linear probes)",
               baselines=(Baseline(init="random", label="random-init model"),
                          Baseline(init="majority", label="majority class")),
               headline=Headline("separability", "Separability: probe accuracy", "rise",
                                 source="Han et al. 2026", absent="run the probes analysis (--data with --label-column)")),
        Metric("mia_auc_{score}", "Membership-inference ROC AUC ... by the {score} score ...", better="lower",
               baselines=(Baseline(value=0.5, label="chance level", side="above"),)),
    )

A name may hold ``{field}`` placeholders: it then covers a family (``mia_auc_loss``,
``mia_auc_zlib``, ...) and the description may use the same fields.

The results folder records the declarations of the analyses it holds (``metrics.json``,
written with ``metrics.parquet``; :func:`write_declarations`); a frame built in a notebook
carries them in ``frame.attrs["metrics"]``. Reports read only these records
(:func:`read_declarations`), never an analysis: a metric without a declaration is still shown,
under its name only.

A baseline is either a constant (``value``: chance AUC 0.5, uniform attention 1.0, zero
selectivity) or the rows of a baseline model with the same task, pooling, layer and head
columns (``init``: ``"random"`` for the random-initialisation model, ``"majority"`` for
the majority-class predictor). A headline metric names the report panel it belongs to and the
direction expected with weight decay; a mechanism whose trained values do not clear the
baseline is not said to hold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plastiscope.hashing import atomic_write

DECLARATIONS_FILE = "metrics.json"
ATTRS_KEY = "metrics"
BETTER = ("higher", "lower", None)
EXPECTED = ("rise", "fall")
ROLES = ("", "outcome", "outcome_accuracy", "validation_loss", "after_finetuning")
SIDES = ("above", "below", "apart", None)


class DeclarationError(ValueError):
    """A metric declaration, or a recorded ``metrics.json``, is malformed."""


@dataclass(frozen=True)
class Baseline:
    """What a metric's trained values are compared with: a constant ``value`` or the rows of a baseline model ``init``.

    - ``value``: a constant in the metric's unit (0.5 for chance AUC, 1.0 for uniform attention);
    - ``init``: the ``init`` column of baseline rows of the same metric, task, pooling, layer
      and head (``"random"``: the random-initialisation model; ``"majority"``: the majority class);
    - ``label``: how the page names it, after "the" ("chance level", "random-init model");
    - ``side``: where trained values must lie to clear it: ``"above"``, ``"below"`` or
      ``"apart"`` (either way); None: the metric's better direction (above for "higher",
      below for "lower", apart without one). Membership AUC is better low, yet clears chance
      above it (leakage measured at all).
    """

    value: float | None = None
    init: str | None = None
    label: str = ""
    side: str | None = None

    def __post_init__(self) -> None:
        """Exactly one of ``value`` and ``init``; ``side`` one of :data:`SIDES`."""
        if (self.value is None) == (self.init is None):
            raise DeclarationError(f"baseline {self.label!r}: give exactly one of value (a constant) and init (baseline rows)")
        if self.side not in SIDES:
            raise DeclarationError(f"baseline {self.label!r}: side must be one of {SIDES}, not {self.side!r}")

    def side_for(self, better: str | None) -> str:
        """Where trained values must lie to clear this baseline, for a metric whose better direction is ``better``."""
        return self.side or {"higher": "above", "lower": "below"}.get(better or "", "apart")

    @property
    def name(self) -> str:
        """The label, or a default one (``init=random`` / ``= 0.5``)."""
        return self.label or (f"init={self.init}" if self.init is not None else f"= {self.value:g}")


@dataclass(frozen=True)
class Headline:
    """A metric's place among a report's headline mechanisms.

    - ``panel``: the panel key (``"separability"``); ``title``: its heading on the page;
    - ``expected``: the direction expected as weight decay grows (``"rise"`` or ``"fall"``);
    - ``source``: who expects it (a paper);
    - ``absent``: how to obtain the metric, printed when a results folder lacks it (a CLI hint);
    - ``variant``: ``(column, value)`` pairs selecting the series of the panel (``(("objective", "loss"),)``);
    - ``order``: panels are shown by increasing order, then by declaration order.
    """

    panel: str
    title: str
    expected: str
    source: str = ""
    absent: str = ""
    variant: tuple[tuple[str, str], ...] = ()
    order: int = 100

    def __post_init__(self) -> None:
        """Checks ``expected``; variant pairs become tuples (they arrive as lists from JSON)."""
        if self.expected not in EXPECTED:
            raise DeclarationError(f"headline {self.panel!r}: expected must be one of {EXPECTED}, not {self.expected!r}")
        object.__setattr__(self, "variant", tuple((str(k), str(v)) for k, v in self.variant))

    def matches_variant(self, variant: str) -> bool:
        """Whether a series' variant label (``"objective=loss, direction=random"``) has every pair of ``variant``."""
        parts = dict(p.split("=", 1) for p in str(variant).split(", ") if "=" in p)
        return all(parts.get(k) == v for k, v in self.variant)


@dataclass(frozen=True)
class Metric:
    """One declared metric (or a family, when ``name`` holds ``{field}`` placeholders).

    - ``description``: what it means and how it is computed (may use the name's fields);
    - ``unit``: ``"nats"``, ``"bits"``, ``"fraction"``, ``"tokens"``, ... ("" when dimensionless);
    - ``better``: ``"higher"``, ``"lower"`` or None where no direction is better (a mechanism's
      description: ranks, norms, entropies); ranking and regret use it;
    - ``citation``: where it is defined (paper, year);
    - ``baselines``: what trained values must clear (:class:`Baseline`);
    - ``headline``: set on a headline metric (:class:`Headline`);
    - ``role``: ``"outcome"`` (the loss after fine-tuning), ``"outcome_accuracy"``,
      ``"validation_loss"`` (the loss before it), ``"after_finetuning"`` (another quantity
      measured after fine-tuning, so no predictor of the outcome), or "".
    """

    name: str
    description: str
    unit: str = ""
    better: str | None = None
    citation: str = ""
    baselines: tuple[Baseline, ...] = ()
    headline: Headline | None = None
    role: str = ""
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Checks ``better`` and ``role``; compiles the name's placeholders."""
        if self.better not in BETTER:
            raise DeclarationError(f"metric {self.name!r}: better must be 'higher', 'lower' or None, not {self.better!r}")
        if self.role not in ROLES:
            raise DeclarationError(f"metric {self.name!r}: role must be one of {ROLES}, not {self.role!r}")
        object.__setattr__(self, "baselines", tuple(self.baselines))
        if "{" in self.name:
            pieces = re.split(r"\{(\w+)\}", self.name)
            regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+)" for i, p in enumerate(pieces))
            object.__setattr__(self, "_pattern", re.compile(f"^{regex}$"))

    def match(self, metric: str) -> Metric | None:
        """This declaration for the concrete name ``metric`` (placeholders filled in), or None when it does not cover it."""
        if self._pattern is None:
            return self if metric == self.name else None
        found = self._pattern.match(str(metric))
        if found is None:
            return None
        fields = found.groupdict()
        return Metric(str(metric), _fill(self.description, fields), self.unit, self.better, self.citation,
                      self.baselines, self.headline, self.role)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``metrics.json`` holds for this metric)."""
        out = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        out["baselines"] = [{k: v for k, v in asdict(b).items() if v is not None} for b in self.baselines]
        out["headline"] = None if self.headline is None else {**asdict(self.headline),
                                                               "variant": [list(p) for p in self.headline.variant]}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metric:
        """The metric a :meth:`to_dict` dict describes; unknown keys are ignored (a newer writer)."""
        try:
            headline = data.get("headline")
            return cls(
                name=str(data["name"]), description=str(data.get("description", "")), unit=str(data.get("unit", "")),
                better=data.get("better"), citation=str(data.get("citation", "")),
                baselines=tuple(Baseline(**{k: b[k] for k in ("value", "init", "label", "side") if k in b})
                                for b in data.get("baselines", ())),
                headline=None if not headline else Headline(**{k: headline[k] for k in
                                                               ("panel", "title", "expected", "source", "absent", "variant", "order")
                                                               if k in headline}),
                role=str(data.get("role", "")),
            )
        except (KeyError, TypeError) as err:
            raise DeclarationError(f"a metric declaration lacks or mistypes a field ({err}): {dict(data)!r}") from err


def _fill(text: str, fields: Mapping[str, str]) -> str:
    """``text`` with its ``{field}`` placeholders replaced (unknown ones left as they are)."""
    return re.sub(r"\{(\w+)\}", lambda m: fields.get(m.group(1), m.group(0)), text)


@dataclass(frozen=True)
class Declarations:
    """The declared metrics of several analyses, in order: analysis name -> its metrics."""

    analyses: dict[str, tuple[Metric, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        """Whether anything is declared."""
        return bool(self.analyses)

    @property
    def order(self) -> tuple[str, ...]:
        """The analyses in declaration order (the order reports show them in)."""
        return tuple(self.analyses)

    def lookup(self, metric: str, analysis: str | None = None) -> Metric | None:
        """The declaration of ``metric`` (of ``analysis`` first, then of any analysis), or None when it has none."""
        names = ([analysis] if analysis in self.analyses else []) + [a for a in self.analyses if a != analysis]
        for name in names:
            for declared in self.analyses[name]:
                found = declared.match(str(metric))
                if found is not None:
                    return found
        return None

    def analysis_of(self, metric: str) -> str | None:
        """The first analysis that declares ``metric``."""
        for name, metrics in self.analyses.items():
            if any(m.match(str(metric)) is not None for m in metrics):
                return name
        return None

    def headlines(self) -> list[tuple[str, Metric]]:
        """``(analysis, metric)`` of every headline metric, by the headline's order, then declaration order."""
        found = [(a, m) for a, ms in self.analyses.items() for m in ms if m.headline is not None]
        return sorted(found, key=lambda am: am[1].headline.order)  # type: ignore[union-attr]

    def with_role(self, role: str) -> list[tuple[str, Metric]]:
        """``(analysis, metric)`` of the metrics declared with ``role``."""
        return [(a, m) for a, ms in self.analyses.items() for m in ms if m.role == role]

    def merged(self, other: Declarations) -> Declarations:
        """These declarations updated by ``other`` (an analysis in both takes ``other``'s); order: self's, then other's new ones."""
        return Declarations({**self.analyses, **other.analyses})

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"analyses": [{"analysis": name, "metrics": [...]}, ...]}`` (a list keeps the order)."""
        return {"analyses": [{"analysis": a, "metrics": [m.to_dict() for m in ms]} for a, ms in self.analyses.items()]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Declarations:
        """The declarations a :meth:`to_json` dict describes."""
        try:
            entries = data["analyses"]
            return cls({str(e["analysis"]): tuple(Metric.from_dict(m) for m in e["metrics"]) for e in entries})
        except (KeyError, TypeError) as err:
            raise DeclarationError(f"metric declarations lack a field ({err}); expected {{'analyses': [{{'analysis', 'metrics'}}]}}") \
                from err


def declare(analyses: Iterable[tuple[str, Sequence[Metric]]]) -> Declarations:
    """Declarations from ``(analysis name, its METRICS)`` pairs, in the given order; a name declared twice in one analysis is refused."""
    out: dict[str, tuple[Metric, ...]] = {}
    for name, metrics in analyses:
        metrics = tuple(metrics)
        seen = [m.name for m in metrics]
        twice = sorted({n for n in seen if seen.count(n) > 1})
        if twice:
            raise DeclarationError(f"analysis {name!r} declares {', '.join(twice)} more than once")
        out[str(name)] = metrics
    return Declarations(out)


def write_declarations(folder: str | Path, declarations: Declarations) -> Path:
    """Write ``folder/metrics.json``, merged into what the folder records already (the analyses it holds from earlier runs)."""
    path = Path(folder) / DECLARATIONS_FILE
    if path.exists():
        try:
            declarations = Declarations.from_json(json.loads(path.read_text())).merged(declarations)
        except (ValueError, DeclarationError):
            pass  # an unreadable record is replaced by this run's
    text = json.dumps(declarations.to_json(), indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))  # a reader sees the old record or the new one
    return path


def read_declarations(source: Any) -> Declarations:
    """The declarations recorded with results: a results folder (its ``metrics.json``), a ``metrics.json``/parquet path
    beside one, or a frame (its ``attrs["metrics"]``). Empty when none are recorded (every metric then shows by name).
    """
    if hasattr(source, "attrs"):
        found = source.attrs.get(ATTRS_KEY)
        if isinstance(found, Declarations):
            return found
        return Declarations.from_json(found) if found else Declarations()
    if isinstance(source, (str, Path)):
        path = Path(source)
        path = path if path.name == DECLARATIONS_FILE else (path / DECLARATIONS_FILE if path.is_dir() else path.parent / DECLARATIONS_FILE)
        if not path.exists():
            return Declarations()
        try:
            return Declarations.from_json(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise DeclarationError(f"{path}: not valid JSON ({err}); delete it and rerun the analysis to record it again") from err
    return Declarations()


def attach(frame: Any, declarations: Declarations) -> Any:
    """``frame`` with ``declarations`` recorded in ``frame.attrs["metrics"]`` (JSON-ready, so copies keep it); returns the frame."""
    frame.attrs[ATTRS_KEY] = declarations.to_json()
    return frame
