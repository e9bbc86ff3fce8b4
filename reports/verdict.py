"""What a report decides: the best configuration after fine-tuning, the trade-off, and a verdict per mechanism.

Han, Bordt, Zhang, Kakade 2026 (arXiv 2602.11137) say larger weight decay gives checkpoints
that can be worse before fine-tuning yet better after it, through three mechanisms. The
headline panels (:func:`panels`) are the headline metrics the results' declarations name
(:mod:`plastiscope.metrics`: each analysis declares its own, with the panel, its title and the
direction expected with weight decay); this module knows no analysis by name. The panel keyed
``outcome`` also draws validation loss (the trade-off) and accuracy after fine-tuning.

Each verdict line is one series against the axis: Spearman's rho over configurations with its
cluster-bootstrap interval, and a permutation p-value (:mod:`.correlate`), Holm-adjusted across
every headline line of the report (Holm 1979). At level :data:`~.correlate.ALPHA`: *holds* (the
expected direction), *opposite*, or *inconclusive*; on another numeric axis *increases* /
*decreases* / *inconclusive*; on a categorical one *differs* / *inconclusive*.

A line whose metric declares baselines (chance, the uniform pattern, a random-init model, the
majority class) must clear them (:mod:`.baselines`: more than half of its checkpoints apart
from every measured baseline) before any direction is claimed: otherwise it is *inconclusive*,
and the page flags the checkpoints indistinguishable from the baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from plastiscope.metrics import Metric
from plastiscope.reports.baselines import Check, check
from plastiscope.reports.choice import choice_table, noise_table
from plastiscope.reports.correlate import (
    ALPHA,
    OUTCOME_ACCURACY,
    before_finetuning,
    better_direction,
    chosen_outcome,
    fmt_p,
    outcome_keys,
    outcome_series,
    series_with_role,
    val_loss_key,
    values_of,
)
from plastiscope.reports.frame import DEFAULT_X, Prepared, configuration_means
from plastiscope.stats import MIN_BOOTSTRAP_CLUSTERS, holm


@dataclass(frozen=True)
class Panel:
    """One headline panel: a declared headline metric (optionally one variant of it) and the direction expected with weight decay."""

    key: str
    title: str
    analysis: str
    metric: str
    expected: str  # "rise" or "fall" with weight decay
    source: str
    absent: str  # how to obtain the metric
    variant: tuple[tuple[str, str], ...] = ()
    declaration: Metric | None = field(default=None, compare=False)

    def matches(self, analysis: str, metric: str, variant: str) -> bool:
        """Whether a series (analysis, metric, variant) belongs to this panel."""
        parts = dict(p.split("=", 1) for p in variant.split(", ") if "=" in p)
        named = self.declaration.match(metric) is not None if self.declaration is not None else metric == self.metric
        return analysis == self.analysis and named and all(parts.get(k) == v for k, v in self.variant)

    @classmethod
    def declared(cls, analysis: str, metric: Metric) -> Panel:
        """The panel of a declared headline metric (:class:`plastiscope.metrics.Headline`)."""
        h = metric.headline
        if h is None:
            raise ValueError(f"{analysis}.{metric.name} is not declared a headline metric")
        return cls(h.panel, h.title, analysis, metric.name, h.expected, h.source, h.absent, h.variant, metric)


def panels(prep: Prepared) -> list[Panel]:
    """The headline panels the results' declarations name, in the declared order (a panel key's first declaration)."""
    found: dict[str, Panel] = {}
    for analysis, metric in prep.declarations.headlines():
        found.setdefault(metric.headline.panel, _present(prep, Panel.declared(analysis, metric)))  # type: ignore[union-attr]
    return list(found.values())


def _present(prep: Prepared, panel: Panel) -> Panel:
    """``panel``, or, where its metric is absent and declared with a role, the same panel for the first metric present with
    that role (the outcome panel of a prompt/response task: its response loss after fine-tuning)."""
    role = panel.declaration.role if panel.declaration is not None else ""
    if not role or panel_series(prep, panel):
        return panel
    same = series_with_role(prep, role)
    declared = prep.declarations.lookup(same[0].metric, same[0].analysis) if same else None
    if declared is None:
        return panel
    return replace(panel, analysis=same[0].analysis, metric=declared.name, variant=(), declaration=declared)


@dataclass
class Verdict:
    """One headline line: a series of a panel (in one group) against the axis."""

    panel: str
    group: str
    key: str
    label: str
    expected: str
    row: dict
    p_holm: float = math.nan
    word: str = "inconclusive"
    baseline: Check | None = None  # the line against its declared baselines (None: a column, not a series)

    def sentence(self, prep: Prepared) -> str:
        """The line's evidence: effect with its interval, configurations, p and the Holm-adjusted p."""
        r = self.row
        if not r or r.get("n_configs", 0) < 3:
            return "fewer than 3 configurations with a value: nothing to test"
        if not math.isfinite(r.get("p_x_effect", math.nan)):
            return f"the same value in all {r['n_configs']} configurations: nothing to test"
        n = f"{r['n_configs']} configurations"
        if r["axis"] == "eta2":
            effect = f"η² {r['x_effect']:.2f} between values of {prep.x}, {n}"
        else:
            interval = f" [{r['x_effect_low']:+.2f}, {r['x_effect_high']:+.2f}]" if math.isfinite(r["x_effect_low"]) else (
                " [—]" if r.get("x_effect_note") else "")  # why: once, in the design's limits above the panels
            effect = f"ρ {r['x_effect']:+.2f}{interval}, {n}"
        return f"{effect}, p {fmt_p(r['p_x_effect'])}, Holm {fmt_p(self.p_holm)}"


@dataclass
class Best:
    """The best configuration in one group by each outcome, by their mean rank, and the best before fine-tuning.

    ``outcome``/``after``/``better``: the chosen outcome (the one the trade-off and the
    predictor table use); ``outcomes``: every outcome's key -> (configuration means best first,
    its better direction), the chosen one first; ``mean_rank``: with several outcomes, one row
    per configuration measured by all of them (``_config``, ``_config_label``, ``mean_rank``),
    best first, ties broken by the chosen outcome's rank.
    """

    group: str
    outcome: str  # series key
    after: pd.DataFrame  # configuration means of the outcome, best first
    before: dict[str, pd.DataFrame] = field(default_factory=dict)  # "validation loss" / "<outcome> before fine-tuning" -> means
    before_better: dict[str, str] = field(default_factory=dict)  # the same names -> "lower" / "higher" (default "lower")
    accuracy: pd.DataFrame | None = None  # configuration means of accuracy after fine-tuning, best first
    better: str = "lower"
    outcomes: dict[str, tuple[pd.DataFrame, str]] = field(default_factory=dict)
    mean_rank: pd.DataFrame | None = None


@dataclass
class Decision:
    """Everything the summary shows."""

    verdicts: list[Verdict]
    missing: dict[str, str]  # panel key -> why it is absent
    best: list[Best]
    design: list[str]  # sentences on what the data can support
    choice: pd.DataFrame | None = None  # which metric would have chosen the winner (reports.choice.choice_table)
    noise: pd.DataFrame | None = None  # headline orderings under measurement noise (reports.choice.noise_table)


def panel_series(prep: Prepared, panel: Panel) -> list[str]:
    """Keys of the series that belong to ``panel`` (the metric with any analysis if none matches its analysis)."""
    keys = [s.key for s in prep.series if s.key in prep.scores and panel.matches(s.analysis, s.metric, s.variant)]
    if not keys:
        keys = [s.key for s in prep.series if s.key in prep.scores and panel.matches(panel.analysis, s.metric, s.variant)]
    return keys


def _word(row: dict, expected: str, prep: Prepared, p_holm: float) -> str:
    if not math.isfinite(p_holm) or p_holm >= ALPHA or not math.isfinite(row.get("x_effect", math.nan)):
        return "inconclusive"
    if prep.categorical:
        return "differs"
    rising = row["x_effect"] > 0
    if prep.x == DEFAULT_X:
        return "holds" if rising == (expected == "rise") else "opposite"
    return "increases" if rising else "decreases"


def _sorted_means(prep: Prepared, values: np.ndarray, mask: np.ndarray, better: str) -> pd.DataFrame:
    table = configuration_means(prep, values, mask)
    return table.sort_values("value", ascending=better == "lower", kind="stable").reset_index(drop=True)


def decide(prep: Prepared, table: pd.DataFrame) -> Decision:
    """The headline verdicts (Holm across all of them), the best configuration per group and the design's limits."""
    rows = {(r["group"], r["series"]): r for r in table.to_dict("records")} if not table.empty else {}
    verdicts, missing = [], {}
    series_keys = {s.key for s in prep.series}
    headline = panels(prep)
    for panel in headline:
        keys = panel_series(prep, panel)
        lines = [(k, prep.series_by_key(k).variant if len(keys) > 1 else "", panel.expected) for k in keys]
        if not keys:
            missing[panel.key] = f"no {panel.metric} in these results" + (f": {panel.absent}." if panel.absent else ".")
        elif panel.key == "outcome":
            val_key = val_loss_key(prep)
            lines += [(val_key, "validation loss (the trade-off)", "rise")] if any(r[1] == val_key for r in rows) else []
            lines += [(s.key, "accuracy after fine-tuning", "rise") for s in outcome_series(prep, OUTCOME_ACCURACY)]
        for group in prep.groups:
            for key, label, expected in lines:
                baseline = check(prep, key, group) if key in series_keys else None
                verdicts.append(Verdict(panel.key, group, key, label, expected, rows.get((group, key), {}), baseline=baseline))
    adjusted = holm([v.row.get("p_x_effect", math.nan) for v in verdicts])
    for v, p in zip(verdicts, adjusted):
        v.p_holm = float(p)
        v.word = _word(v.row, v.expected, prep, v.p_holm)
        if v.baseline is not None and not v.baseline.clears:
            v.word = "inconclusive"  # a metric that does not clear its baseline supports no direction
    best = best_configurations(prep)
    titles = {panel.key: panel.title for panel in headline}
    lines = [(v.group, titles[v.panel] + (f" ({v.label})" if v.label else ""), v.key) for v in verdicts]
    for b in best:  # every outcome and validation loss, whether or not a panel shows them
        extra = [(f"Outcome: {key}", key) for key in b.outcomes] + [("Validation loss", val_loss_key(prep))]
        lines += [(b.group, label, key) for label, key in extra if (b.group, key) not in {(g, k) for g, _, k in lines}]
    lines = list(dict.fromkeys(lines))
    return Decision(verdicts, missing, best, design_limits(prep, verdicts), choice=choice_table(prep, chosen_outcome(prep)),
                    noise=noise_table(prep, lines))


def best_configurations(prep: Prepared) -> list[Best]:
    """Per group: configurations by each outcome (best first; the chosen outcome first), their mean rank, and by the
    losses before fine-tuning (validation loss; the outcome's own loss before fine-tuning where measured,
    :func:`~.correlate.before_finetuning`)."""
    keys = outcome_keys(prep)
    if not keys:
        return []
    chosen = prep.series_by_key(keys[0])
    out = []
    before_keys = {"validation loss": val_loss_key(prep)}
    counterpart = before_finetuning(prep, chosen)  # e.g. the downstream loss before fine-tuning
    if counterpart is not None:
        before_keys[f"{counterpart.metric.replace('_', ' ')} fine-tuning"] = counterpart.key
    before_better = {name: "lower" if key == val_loss_key(prep) else better_direction(prep, prep.series_by_key(key).metric) or "lower"
                     for name, key in before_keys.items()}
    accuracy = [s.key for s in outcome_series(prep, OUTCOME_ACCURACY) if s.variant == chosen.variant]
    directions = {k: better_direction(prep, prep.series_by_key(k).metric) or "lower" for k in keys}
    for group in prep.groups:
        mask = (prep.checkpoints["_group"] == group).to_numpy()
        after = _sorted_means(prep, values_of(prep, keys[0]), mask, directions[keys[0]])
        if after.empty:
            continue
        best = Best(group, keys[0], after, better=directions[keys[0]])
        for key in keys:
            means = after if key == keys[0] else _sorted_means(prep, values_of(prep, key), mask, directions[key])
            if not means.empty:
                best.outcomes[key] = (means, directions[key])
        best.mean_rank = mean_ranks(best.outcomes) if len(best.outcomes) > 1 else None
        for name, key in before_keys.items():
            means = _sorted_means(prep, values_of(prep, key), mask, before_better[name])
            if not means.empty:
                best.before[name] = means
                best.before_better[name] = before_better[name]
        if accuracy:
            best.accuracy = _sorted_means(prep, values_of(prep, accuracy[0]), mask, "higher")
        out.append(best)
    return out


def mean_ranks(outcomes: dict[str, tuple[pd.DataFrame, str]]) -> pd.DataFrame:
    """The configurations measured by every outcome with their mean rank across outcomes (1 = best), best first.

    Ranks are average ranks within each outcome (ties share them); equal mean ranks are broken
    by the first (chosen) outcome's rank.
    """
    ranks = []
    for key, (means, better) in outcomes.items():
        goodness = means["value"] if better == "higher" else -means["value"]
        ranks.append(pd.Series(goodness.rank(ascending=False, method="average").to_numpy(), index=means["_config"], name=key))
    table = pd.concat(ranks, axis=1, join="inner")
    first = next(iter(outcomes.values()))[0].set_index("_config")
    result = pd.DataFrame({"_config": table.index, "_config_label": first["_config_label"].reindex(table.index).to_numpy(),
                           "mean_rank": table.mean(axis=1).to_numpy(), "_first": table.iloc[:, 0].to_numpy()})
    return result.sort_values(["mean_rank", "_first"], kind="stable").drop(columns="_first").reset_index(drop=True)


def tradeoff(best: Best, name: str) -> pd.DataFrame:
    """Configurations worse before fine-tuning (by ``name``, in its better direction) than the best-before one, yet better after it.

    Rows of ``best.after`` (best first, by the chosen outcome's direction) with columns
    ``before`` (their value by ``name``); empty when the best before is also the best after,
    or ``name`` was not measured.
    """
    before = best.before.get(name)
    if before is None or before.empty:
        return best.after.iloc[0:0]
    top = before.iloc[0]
    after = best.after.set_index("_config")
    if top["_config"] not in after.index:
        return best.after.iloc[0:0]
    reference = after.loc[top["_config"], "value"]
    values = before.set_index("_config")["value"]
    better_after = best.after["value"] > reference if best.better == "higher" else best.after["value"] < reference
    found = best.after[better_after & best.after["_config"].isin(values.index)]
    before_values = found["_config"].map(values)
    found = found[before_values < top["value"] if best.before_better.get(name) == "higher" else before_values > top["value"]]
    return found.assign(before=found["_config"].map(values))


def design_limits(prep: Prepared, verdicts: list[Verdict]) -> list[str]:
    """Plain sentences on what the sweep's design can support (configurations, seeds, the smallest reachable p)."""
    lines = []
    tested = [v for v in verdicts if v.row and math.isfinite(v.row.get("p_x_effect_perfect", math.nan))]
    m = len(tested)
    low, high = prep.seeds_per_configuration
    n_configs = prep.checkpoints.loc[prep.has_x, "_config"].nunique()
    seeds = f"{low} seed{'s' if low != 1 else ''}" if low == high else f"{low}-{high} seeds"
    lines.append(f"{n_configs} configurations × {seeds} each ({prep.checkpoints['_x'].notna().sum()} checkpoints"
                 + (f", {len(prep.groups)} groups" if prep.group_by else "") + ").")
    if tested:
        best = min(v.row["p_x_effect_perfect"] for v in tested)
        if best * m >= ALPHA:
            perfect = "a perfect separation of its values" if prep.categorical else "a perfect monotone trend"
            lines.append(f"These data cannot decide: even {perfect} would reach p = {fmt_p(best)} "
                         f"({fmt_p(min(1.0, best * m))} after Holm across the {m} headline tests), above α = {ALPHA}; "
                         "every verdict is inconclusive until the sweep has more configurations or seeds.")
    elif m == 0:
        lines.append("No headline metric could be tested (fewer than 3 configurations with a value).")
    if not prep.categorical and 3 <= n_configs < MIN_BOOTSTRAP_CLUSTERS:
        lines.append(f"No cluster bootstrap interval for ρ: {n_configs} configurations, and an interval needs at least "
                     f"{MIN_BOOTSTRAP_CLUSTERS} (with fewer, resamples that draw 3 or fewer distinct configurations, whose ρ is "
                     "±1, ±0.5 or undefined, set the interval's ends).")
    if high < 2:
        lines.append("One seed per configuration: seed-to-seed variation is unknown, so a trend may be one seed's luck; the "
                     "measurement-noise table says only whether each ordering survives the checkpoints' own measurement intervals.")
    return lines
