"""The ``plastiscope`` command: train-sweep, analyze, report, compare, options, demo.

Exit codes:

- 0: success; for ``analyze``, every requested (checkpoint, analysis) succeeded or was cached;
- 2: bad input, with a one-line reason naming the file, line, flag or option and the fix
  (a missing file, a manifest or data file that does not parse, a bad flag or option value,
  an option for an analysis that is not run, ``--out`` naming a file, ...), before any model loads;
- 3: ``analyze`` ran, but some (checkpoint, analysis) failed (a checkpoint refused by strict
  loading, an analysis that raised): each is printed and listed in ``failures.csv``; the
  others' results are in ``metrics.parquet``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

# plain help (click's formatter): long option names and texts wrap to any terminal width instead of being cut
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0].replace("``", ""), rich_markup_mode=None,
                  context_settings={"max_content_width": 120})
EXIT_BAD_INPUT, EXIT_FAILURES = 2, 3


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _folder(path: Path, flag: str) -> None:
    """Refuse an output folder that is an existing file."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: a file, not a folder; pass a folder (it is created if missing)")


@contextlib.contextmanager
def _bad_input_exits(*also: type[Exception]) -> Iterator[None]:
    """Bad input raised inside (a missing file, a broken checkpoint or data file, a bad value, a missing optional
    package) ends the command with exit code 2 and its one-line reason; so do the exceptions ``also`` names (the
    documented one-line errors of a command); anything else propagates."""
    from plastiscope.checkpoint import CheckpointError
    from plastiscope.data import DataError

    try:
        yield
    except (CheckpointError, DataError, FileNotFoundError, ValueError, KeyError, ImportError, *also) as err:
        _fail(err)


def _existing_results(paths: list[Path]) -> None:
    """Refuse a results folder that does not exist, with the command that makes it."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no such results folder; run `plastiscope analyze ... --out {missing[0]}` first")


@app.callback()
def main(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details (tracebacks of failures); libraries' progress bars "
                                 "and warnings too."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's; the demo uses 1)."),
) -> None:
    """Measure the mechanisms of language-model plasticity across weight-decay sweeps."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the command never reaches a hub: checkpoints are local
    ctx.ensure_object(dict)["verbose"] = verbose
    if threads:
        import torch

        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_not_a_failure)
    for noisy in ("transformers", "transformer_lens", "root"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _not_a_failure(record: logging.LogRecord) -> bool:
    """Drop the log line of a failed (checkpoint, analysis): the command prints each once, at the end."""
    return not getattr(record, "failure", False)


def _verbose(ctx: typer.Context) -> bool:
    root = ctx.find_root()
    return bool((root.obj or {}).get("verbose")) if root is not None else False


@app.command("train-sweep")
def train_sweep_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for the checkpoints and manifest.csv."),
    weight_decays: str | None = typer.Option(None, help="Comma-separated AdamW weight decays (default 0,0.1,0.3,1)."),
    seeds: str | None = typer.Option(
        None, help="Comma-separated seeds (init and data order; default 0,1); runs differing only in seed are replicates."),
    schedule: str | None = typer.Option(
        None, help="Learning-rate schedule(s) after warmup, comma-separated: cosine, linear, wsd (warmup-stable-decay), "
        "wso (warmup-stable-only: constant; also 'constant'). Default cosine."),
    final_lr_fraction: str | None = typer.Option(
        None, help="Final learning rate as a fraction of the peak, comma-separated (decaying schedules; default 0.1)."),
    decay_fraction: float | None = typer.Option(None, help="wsd: share of the steps the learning rate decays over (default 0.2)."),
    steps: int | None = typer.Option(None, help="Optimizer steps per run."),
    warmup_steps: int | None = typer.Option(None, help="Linear warmup steps."),
    learning_rate: float | None = typer.Option(None, help="Peak learning rate."),
    save_steps: str | None = typer.Option(None, help="Comma-separated steps after which to save a checkpoint too (training dynamics)."),
    decay_all: bool = typer.Option(False, help="Decay norms and biases too (default: matrices only)."),
    workers: int = typer.Option(1, help="Runs trained at once, each in its own process on one torch thread."),
    quick: bool = typer.Option(False, help="The quick demo's sweep: smaller models, fewer steps (a minute or two)."),
) -> None:
    """Pretrain small Llama-style models on the embedded corpus: a grid of weight decays x seeds (x schedules)."""
    from plastiscope.console import interactive
    from plastiscope.demo.sweep import DEMO, QUICK, ConfigError, DivergedError, TrainConfig, train_sweep

    examples = {"--weight-decays": "0,0.1,1", "--seeds": "0,1", "--schedule": "cosine,wsd,wso", "--final-lr-fraction": "0.1,0",
                "--save-steps": "100,200"}
    flags = {"weight_decays": "--weight-decays", "seeds": "--seeds", "schedules": "--schedule",
             "final_lr_fractions": "--final-lr-fraction", "decay_fraction": "--decay-fraction", "steps": "--steps",
             "warmup_steps": "--warmup-steps", "learning_rate": "--learning-rate", "save_steps": "--save-steps",
             "workers": "--workers"}
    lists = {"weight_decays": (weight_decays, float, "a weight decay"), "seeds": (seeds, int, "a seed"),
             "schedules": (schedule, str, "a schedule"), "final_lr_fractions": (final_lr_fraction, float, "a fraction"),
             "save_steps": (save_steps, int, "a step")}

    def parse_list(flag: str, text: str, kind: type, noun: str) -> tuple:
        """``"0,0.1,1"`` -> (0.0, 0.1, 1.0); a clear error names ``flag`` and the item that is not ``noun``."""
        values = []
        for item in (x.strip() for x in text.split(",")):
            try:
                if not item:
                    raise ValueError(item)
                values.append(kind(item))
            except ValueError:
                raise ValueError(f"{flag}: {item!r} is not {noun}; write comma-separated values, e.g. {flag} {examples[flag]}") from None
        return tuple(values)

    with _bad_input_exits():
        try:
            _folder(out, "--out")
            if learning_rate is not None and not learning_rate > 0:
                raise ValueError(f"--learning-rate {learning_rate}: must be a number > 0")
            fields = dict(QUICK if quick else DEMO)
            for name, (text, kind, noun) in lists.items():
                if text is not None:
                    fields[name] = parse_list(flags[name], text, kind, noun)
            numbers = {"decay_fraction": decay_fraction, "steps": steps, "warmup_steps": warmup_steps, "learning_rate": learning_rate}
            fields.update({k: v for k, v in numbers.items() if v is not None}, decay_all=decay_all)
            manifest = train_sweep(out, TrainConfig(**fields), workers=workers, progress=interactive())  # no escape codes in logs
        except ConfigError as err:
            _fail(ValueError(f"{flags.get(err.field, err.field)}: {err.reason}"))
        except DivergedError as err:
            _fail(err)
    typer.echo(str(manifest))


@app.command()
def analyze(
    ctx: typer.Context,
    source: Path | None = typer.Argument(
        None, help="Manifest (.csv/.json/.yaml), sweep folder, or one checkpoint folder (or sweep: in --config)."),
    out: Path | None = typer.Option(None, "--out", help="Results folder (metrics.parquet, metrics.csv, run.json)."),
    config: Path | None = typer.Option(
        None, "--config", help="A run configuration (YAML or JSON, the schema run.json records), e.g. results/run.json to replay "
        "a run; flags given on the command line override it."),
    analyses: str | None = typer.Option(
        None,
        help="Comma-separated: probes,attention,overfit,landscape,plasticity "
        "(default: all whose inputs are given, but plasticity, which fine-tunes: name it).",
    ),
    data: Path | None = typer.Option(None, help="Documents for probes and attention statistics."),
    text_column: str = typer.Option("text", help="Text column of JSONL/CSV/datasets inputs (every input)."),
    label_column: str | None = typer.Option(None, help="Label column of --data (probes)."),
    pooling: str = typer.Option("mean", help="Probe feature pooling over tokens: mean or last."),
    train_data: Path | None = typer.Option(None, help="Documents the checkpoints were trained on (overfit, landscape)."),
    val_data: Path | None = typer.Option(None, help="Held-out documents of the same kind (overfit)."),
    finetune_data: Path | None = typer.Option(None, help="A downstream task's documents (plasticity, landscape's basins)."),
    finetune_text_column: str | None = typer.Option(None, help="Text column of --finetune-data (default: --text-column)."),
    finetune_label_column: str | None = typer.Option(
        None, help="Label column of --finetune-data: a labelled task (plasticity's and landscape's accuracy)."),
    max_docs: int | None = typer.Option(None, min=1, help="Use at most this many documents of each input."),
    option: list[str] = typer.Option(
        [],
        "--option",
        "-o",
        help="An analysis option, ANALYSIS.KEY=VALUE (VALUE as JSON, else text); repeatable, e.g. -o overfit.prefix_tokens=8.",
    ),
    batch_size: int = typer.Option(16, min=1, help="Documents per forward pass."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N, or auto (cuda when available)."),
    dtype: str = typer.Option("float32", help="Forward-pass precision: float32, bfloat16, float16 (statistics stay float32)."),
    device_map: str | None = typer.Option(
        None, help="Spread or offload large checkpoints: auto, or a JSON mapping of modules to devices; replaces --device."),
    executor: str = typer.Option("local", help="local (this process), process (--workers processes) or ray (one Ray task per "
                                 "checkpoint)."),
    workers: int | None = typer.Option(None, min=1, help="--executor process: checkpoints analysed at once (default 2)."),
    address: str | None = typer.Option(None, help="--executor ray: cluster address (default: start a local one)."),
    task_gpus: float | None = typer.Option(None, min=0, help="--executor ray: GPUs per task (default: what the checkpoint's "
                                           "--device or --device-map needs)."),
    task_cpus: float | None = typer.Option(None, min=0, help="--executor ray: CPUs per task (default 1)."),
) -> None:
    """Analyze every checkpoint of a sweep; a broken checkpoint is reported and skipped.

    Exit code 0 when every requested (checkpoint, analysis) succeeded or was cached, 3 when
    some failed (listed in failures.csv), 2 on bad input.
    """
    import json
    import warnings

    from plastiscope.pipeline import analyze as run
    from plastiscope.pipeline import read_run_config, row_count

    def given(name: str) -> bool:
        source_of = ctx.get_parameter_source(name)
        return source_of is not None and source_of.name in ("COMMANDLINE", "ENVIRONMENT")

    with _bad_input_exits():
        settings = read_run_config(config) if config is not None else {}
        flags = {"sweep": ("source", source), "out": ("out", out), "text_column": ("text_column", text_column),
                 "label_column": ("label_column", label_column), "finetune_label_column": ("finetune_label_column", finetune_label_column),
                 "max_docs": ("max_docs", max_docs), "batch_size": ("batch_size", batch_size), "device": ("device", device),
                 "dtype": ("dtype", dtype), "executor": ("executor", executor)}
        for key, (name, value) in flags.items():
            if given(name) or (key not in settings and value is not None):
                settings[key] = str(value) if isinstance(value, Path) else value
        for key, value in (("data", data), ("train_data", train_data), ("val_data", val_data), ("finetune_data", finetune_data)):
            if value is not None:
                settings[key] = {"path": str(value)}
        for key, column, value in (("data", "label_column", label_column if given("label_column") else None),
                                   ("finetune_data", "label_column", finetune_label_column if given("finetune_label_column") else None),
                                   ("finetune_data", "text_column", finetune_text_column)):
            if value is not None and settings.get(key) is not None:
                spec = settings[key] if isinstance(settings[key], dict) else {"path": settings[key]}
                settings[key] = {**spec, column: value}
        if given("device_map") or ("device_map" not in settings and device_map is not None):
            settings["device_map"] = json.loads(device_map) if device_map and device_map.lstrip().startswith("{") else device_map
        if settings.get("device_map") is not None and not given("device"):
            settings.pop("device", None)  # a device map places the model itself
        if analyses:
            settings["analyses"] = [a.strip() for a in analyses.split(",") if a.strip()]
        options = {k: dict(v) for k, v in (settings.get("options") or {}).items()}
        if given("pooling"):
            if pooling not in ("mean", "last"):
                raise ValueError(f"--pooling {pooling!r}: choose mean or last")
            options.setdefault("probes", {})["pooling"] = pooling
        for name, key, value in map(_parse_option, option):
            options.setdefault(name, {})[key] = value
        settings["options"] = options
        settings["executor_options"] = _executor_options(settings.get("executor", "local"), dict(settings.get("executor_options") or {}),
                                                         {"workers": workers, "address": address, "num_gpus": task_gpus,
                                                          "num_cpus": task_cpus})
        for key, what in (("sweep", "SOURCE (a manifest or sweep folder)"), ("out", "--out FOLDER")):
            if settings.get(key) is None:
                raise ValueError(f"pass {what}" + (f", or {key}: in {config}" if config is not None else " (or --config FILE)"))
        _folder(Path(settings["out"]), "--out")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results, failures = run(**settings, progress=True, verbose=_verbose(ctx))
    for message in dict.fromkeys(str(w.message) for w in caught):
        typer.echo(f"warning: {message}", err=True)
    for row in failures.itertuples():
        typer.echo(f"skipped {row.checkpoint} ({row.analysis}): {row.error}", err=True)
    out = Path(settings["out"])
    typer.echo(f"{row_count(out)} rows -> {out / 'metrics.parquet'}")
    if len(failures):
        typer.echo(f"{len(failures)} (checkpoint, analysis) failed: see {out / 'failures.csv'}", err=True)
        raise typer.Exit(EXIT_FAILURES)


def _executor_options(executor: str, options: dict, flags: dict) -> dict:
    """The executor's options: those of the configuration, overridden by the flags given; a flag of another executor is refused."""
    names = {"process": ("workers",), "ray": ("address", "num_gpus", "num_cpus"), "local": ()}
    flag_names = {"workers": "--workers", "address": "--address", "num_gpus": "--task-gpus", "num_cpus": "--task-cpus"}
    if executor not in names:
        raise ValueError(f"--executor {executor!r}: choose local, process or ray")
    for key, value in flags.items():
        if value is None:
            continue
        if key not in names[executor]:
            owner = next(e for e, keys in names.items() if key in keys)
            raise ValueError(f"{flag_names[key]} applies to --executor {owner}, not {executor}")
        options[key] = value
    return options


def _parse_option(text: str) -> tuple[str, str, object]:
    """``overfit.prefix_tokens=8`` -> ("overfit", "prefix_tokens", 8); the value is JSON when it parses."""
    import json

    target, sep, raw = text.partition("=")
    name, dot, key = target.partition(".")
    if not (sep and dot and name and key):
        raise ValueError(f"--option {text!r}: write ANALYSIS.KEY=VALUE, e.g. overfit.prefix_tokens=8")
    try:
        return name, key, json.loads(raw)
    except json.JSONDecodeError:
        return name, key, raw


@app.command()
def report(
    results: list[Path] = typer.Argument(..., help="Results folder(s) written by `plastiscope analyze`."),
    out: Path | None = typer.Option(None, "--out", help="One HTML report (of one results folder, or all combined)."),
    out_dir: Path | None = typer.Option(None, "--out-dir", help="One report per results folder (or group) plus index.html."),
    group_by: str | None = typer.Option(None, help="Hyperparameter column to compare groups side by side."),
    format: str = typer.Option("html", help="Comma-separated outputs: html, plus csv (data behind each figure), png, svg (need kaleido)."),
    x: str = typer.Option("weight_decay", "--x", help="The swept hyperparameter on the horizontal axis (numeric or categorical, "
                          "e.g. schedule; step for training dynamics)."),
    outcomes: list[Path] | None = typer.Option(None, "--outcomes", help="Outcome table (checkpoint, metric, value) or "
                                               "lm-evaluation-harness results_*.json, or a folder of them; stored in the results folder."),
    outcome: str | None = typer.Option(None, "--outcome", help="The outcome to rank by (metric or series; default: the "
                                       "first metric declared as the outcome, e.g. downstream_loss_after, where present)."),
) -> None:
    """Write self-contained HTML reports (plotly embedded, opens offline)."""
    from plastiscope import reports

    with _bad_input_exits(RuntimeError):  # PNG/SVG without kaleido, or kaleido without a browser
        if (out is None) == (out_dir is None):
            raise ValueError("pass exactly one of --out FILE or --out-dir DIR")
        if out is not None and out.is_dir():
            raise ValueError(f"--out {out}: a folder; --out names the HTML file to write (or use --out-dir {out})")
        if out_dir is not None:
            _folder(out_dir, "--out-dir")
        _existing_results(results)
        formats = tuple(f for f in format.split(",") if f)
        if outcomes:
            if len(results) != 1:
                raise ValueError("--outcomes: pass one results folder; import outcomes into each folder on its own")
            reports.import_outcomes(results[0], outcomes)
        if out is not None:
            source = results[0] if len(results) == 1 else results
            path = reports.write_report(source, out, group_by=group_by, formats=tuple(f for f in formats if f != "html"), x=x,
                                        outcome=outcome)
        else:
            if outcome is not None:
                raise ValueError("--outcome: choose the outcome with --out (one report)")
            path = reports.write_reports(results, out_dir, group_by=group_by, formats=formats, x=x)
    typer.echo(str(path))


@app.command()
def compare(
    proxy: Path = typer.Argument(..., help="Results folder of the proxy sweep (e.g. small models)."),
    target: Path = typer.Argument(..., help="Results folder of the target sweep (e.g. the large runs)."),
    key: str = typer.Option(..., "--key", help="Column(s) that identify a configuration in both sweeps, comma-separated (e.g. recipe)."),
    by: str | None = typer.Option(None, "--by", help="Evaluate each value of this proxy hyperparameter on its own (e.g. learning_rate)."),
    top_k: int = typer.Option(1, "--top-k", help="Size of the proxy's pick for the decision regret."),
    out: Path | None = typer.Option(None, "--out", help="Also write the agreement as a self-contained HTML page."),
    csv: Path | None = typer.Option(None, "--csv", help="Also write the full table as CSV."),
) -> None:
    """How a proxy sweep ranks the matched configurations against a target sweep: Spearman with intervals, top-k regret."""
    from plastiscope import reports
    from plastiscope.reports.agreement import format_agreement

    with _bad_input_exits():
        _existing_results([proxy, target])
        table = reports.sweep_agreement(proxy, target, key, by=by, top_k=top_k)
        if out is not None:
            typer.echo(f"report: {reports.write_agreement(table, out)}")
        if csv is not None:
            table.to_csv(csv, index=False)
    typer.echo(format_agreement(table))


@app.command()
def options(
    analysis: str | None = typer.Argument(None, help="One analysis (default: every analysis)."),
) -> None:
    """List each analysis's options (``-o ANALYSIS.KEY=VALUE``): default, what a value must be, what it means."""
    import json

    from plastiscope.runner import available_analyses, get_analysis

    if analysis is not None:
        with _bad_input_exits():
            get_analysis(analysis)
    names = [analysis] if analysis is not None else available_analyses()
    for name in names:
        typer.echo(name)
        for key, option in get_analysis(name).options.options.items():
            typer.echo(f"  {name}.{key}={json.dumps(option.default)}  ({option.constraint.description}) {option.doc}")


@app.command()
def demo(
    out: Path = typer.Option(Path("plastiscope-demo"), "--out", help="Folder for the sweep, results and report."),
    quick: bool = typer.Option(False, help="Smaller models, less data, fewer documents analysed (a few minutes)."),
    workers: int = typer.Option(2, help="Runs trained at once, each in its own process on one torch thread."),
) -> None:
    """Train the embedded sweep (or reuse it), analyze it with every analysis, write the report."""
    from plastiscope.demo import run_demo

    if workers < 1:
        _fail(ValueError(f"--workers {workers}: at least 1"))
    path = run_demo(out, quick=quick, workers=workers)
    typer.echo(f"report: {path.resolve()}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
