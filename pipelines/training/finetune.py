"""Mode "finetune": the whole encoder plus one linear head per task, trained jointly.

Multi-task when several datasets are given. Writes a Hugging Face-loadable encoder directory
plus one head directory per task, loadable with ``Encoder(EncoderSettings(model_dir=...))``.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipelines.encoder import default_prompt, files_digest, mean_pool
from pipelines.heads import Head, HeadSpec, save_head
from pipelines.training.datasets import Dataset
from pipelines.training.dense import seed_all
from pipelines.training.metrics import summary_metrics
from pipelines.training.splits import stratified_split

Batch = tuple[int, list[int]]  # (task index, training-text indices)
State = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]  # (encoder, linear heads)


@dataclass
class _Task:
    name: str
    data: Dataset
    y: list[int]  # label index of every training text
    train: list[int]
    val: list[int]
    linear: nn.Linear

    def texts(self, idx: list[int]) -> list[str]:
        return [self.data.train[i][0] for i in idx]


def finetune(
    datasets_: list[Dataset],
    out_dir: Path,
    *,
    model_dir: Path | None = None,
    model: Any = None,
    tokenizer: Any = None,
    task_names: list[str] | None = None,
    epochs: int = 3,
    lr: float = 5e-5,
    head_lr: float = 1e-3,
    batch_size: int = 32,
    window: int = 256,
    seed: int = 13,
    val_fraction: float = 0.1,
    patience: int = 1,
    max_train: int | None = None,
    freeze_embeddings: bool = False,
    command: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the whole encoder with one linear head per dataset (multi-task when several).

    Texts are cut to their first `window` tokens for training (inference still reads windows);
    batches alternate between tasks in proportion to their size; after each epoch every task's
    validation macro-F1 is measured and the state with the best mean is kept (early stopping
    after `patience` epochs without improvement). Every text gets the encoder's prompt (e5:
    "query: "), as at inference. `freeze_embeddings` keeps the word embeddings as they are (a
    250k-piece vocabulary is most of e5's weights, and AdamW would update all of it every step).
    Training runs in fp32: bf16 autocast was faster but learnt far worse on e5 (a 1,600-review probe:
    validation macro-F1 0.41 against 0.80). Writes ``out_dir`` as a Hugging Face
    directory (config, safetensors, tokenizer) plus ``out_dir/heads/<task>/``, heads that load
    with `Classifier.load(Encoder(EncoderSettings(model_dir=out_dir)), [out_dir/heads/<task>])`.
    """
    seed_all(seed)
    t0 = time.time()
    model, tokenizer, base_name = _load_base(model_dir, model, tokenizer)
    source = Path(model_dir) if model_dir else None
    prompt = default_prompt(source) if source else ""
    if freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    names = task_names or [d.name for d in datasets_]
    hidden = model.config.hidden_size
    tasks = [_make_task(name, data, hidden, val_fraction, seed, max_train) for name, data in zip(names, datasets_)]
    linears = nn.ModuleList([t.linear for t in tasks])
    optim = torch.optim.AdamW(
        [
            {"params": [p for p in model.parameters() if p.requires_grad], "lr": lr},
            {"params": linears.parameters(), "lr": head_lr},
        ],
        weight_decay=0.01,
    )
    steps_per_epoch = sum(math.ceil(len(t.train) / batch_size) for t in tasks)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        optim, max_lr=[lr, head_lr], total_steps=max(steps_per_epoch * epochs, 1), pct_start=0.1
    )
    rng = random.Random(seed)
    history: dict[str, list] = {"epoch": [], "train_loss": [], "val_macro_f1": []}
    best_score, best_state, best_epoch, stale = -1.0, None, 0, 0
    for epoch in range(1, epochs + 1):
        schedule = _epoch_batches(tasks, batch_size, rng)
        bar = tqdm(
            schedule, desc=f"finetune epoch {epoch}/{epochs}", unit="batch", disable=not progress, dynamic_ncols=True
        )
        train_loss = _train_epoch(model, tokenizer, window, prompt, tasks, linears, optim, sched, bar)
        val = _validate(model, tokenizer, window, prompt, tasks, batch_size * 2)
        score = float(np.mean([v["macro_f1"] for v in val.values()]))
        history["epoch"].append(epoch)
        history["train_loss"].append(round(train_loss, 5))
        history["val_macro_f1"].append({n: round(v["macro_f1"], 5) for n, v in val.items()})
        if score > best_score:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = _snapshot(model, linears)
        else:
            stale += 1
            if stale >= patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state[0])
    linears.load_state_dict(best_state[1])
    model.eval()
    out_dir = Path(out_dir)
    version = _save_encoder(model, tokenizer, out_dir, source)
    info = {
        "base": base_name,
        "tasks": names,
        "epochs_run": len(history["epoch"]),
        "best_epoch": best_epoch,
        "window": window,
        "lr": lr,
        "head_lr": head_lr,
        "batch_size": batch_size,
        "seed": seed,
        "val_fraction": val_fraction,
        "max_train": max_train,
        "freeze_embeddings": freeze_embeddings,
        "prompt": prompt,
        "history": history,
        "seconds": round(time.time() - t0, 1),
        "command": command,
    }
    (out_dir / "bertstream_finetune.json").write_text(json.dumps(info, indent=2) + "\n")  # before the digest
    files = files_digest(out_dir)  # hashes the whole encoder: once for all heads
    for t in tasks:
        _save_task_head(t, out_dir, hidden, version, files, info)
    return info


def _load_base(model_dir: Path | None, model: Any, tokenizer: Any) -> tuple[Any, Any, str]:
    """(model, tokenizer, base name): the given pair, else the one in `model_dir` (default: the bundled model)."""
    if model is not None and tokenizer is not None:
        return model, tokenizer, "in-memory"
    from transformers import AutoModel, AutoTokenizer

    from pipelines.registry import default_model_dir

    source = Path(model_dir) if model_dir else default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = AutoModel.from_pretrained(source, local_files_only=True, use_safetensors=True)
    return model, tokenizer, str(source)


def _make_task(name: str, data: Dataset, hidden: int, val_fraction: float, seed: int, max_train: int | None) -> _Task:
    index = {label: i for i, label in enumerate(data.labels)}
    y = [index[label] for _, label in data.train]
    train, val = stratified_split(y, val_fraction, seed)
    if max_train:
        train = sorted(random.Random(seed).sample(train, min(max_train, len(train))))
    return _Task(name, data, y, train, val, nn.Linear(hidden, len(data.labels)))


def _pooled(model: Any, tokenizer: Any, window: int, prompt: str, texts: list[str]) -> torch.Tensor:
    """The last layer mean-pooled over the first `window` tokens of each text, `prompt` in front."""
    enc = tokenizer([prompt + t for t in texts], truncation=True, max_length=window, padding=True, return_tensors="pt")
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return mean_pool(out.last_hidden_state, enc["attention_mask"])


BUCKET_BATCHES = 32  # batches per run of shuffled texts that are sorted by length before batching


def _epoch_batches(tasks: list[_Task], batch_size: int, rng: random.Random) -> list[Batch]:
    """Every task's training texts in shuffled batches, the batches of all tasks shuffled together.

    Within each run of `BUCKET_BATCHES` batches the texts are sorted by length, so that a batch pads
    little (short reviews beside long articles would otherwise pad most of it away)."""
    schedule: list[Batch] = []
    for k, t in enumerate(tasks):
        order = t.train[:]
        rng.shuffle(order)
        run = batch_size * BUCKET_BATCHES
        for r in range(0, len(order), run):
            chunk = sorted(order[r : r + run], key=lambda i: len(t.data.train[i][0]))
            schedule += [(k, chunk[s : s + batch_size]) for s in range(0, len(chunk), batch_size)]
    rng.shuffle(schedule)
    return schedule


def _train_epoch(
    model: Any,
    tokenizer: Any,
    window: int,
    prompt: str,
    tasks: list[_Task],
    linears: nn.ModuleList,
    optim: torch.optim.Optimizer,
    sched: Any,
    bar: Any,
) -> float:
    """One pass over the batches of `bar` (the epoch's schedule); the mean batch loss."""
    model.train()
    running, n_batches = 0.0, 0
    for k, idx in bar:
        t = tasks[k]
        logits = t.linear(_pooled(model, tokenizer, window, prompt, t.texts(idx)))
        loss = nn.functional.cross_entropy(logits, torch.tensor([t.y[i] for i in idx]))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(linears.parameters()), 1.0)
        optim.step()
        sched.step()
        running += float(loss.detach())
        n_batches += 1
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    return running / max(n_batches, 1)


def _validate(
    model: Any, tokenizer: Any, window: int, prompt: str, tasks: list[_Task], batch_size: int
) -> dict[str, dict[str, float]]:
    """Every task's accuracy and macro-F1 on its validation split."""
    model.eval()
    result = {}
    with torch.no_grad():
        for t in tasks:
            val = sorted(t.val, key=lambda i: len(t.data.train[i][0]))  # by length: little padding
            preds: list[int] = []
            for s in range(0, len(val), batch_size):
                preds += (
                    t.linear(_pooled(model, tokenizer, window, prompt, t.texts(val[s : s + batch_size])))
                    .argmax(1)
                    .tolist()
                )
            result[t.name] = summary_metrics([t.y[i] for i in val], preds, len(t.data.labels))
    return result


def _snapshot(model: Any, linears: nn.ModuleList) -> State:
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {k: v.detach().clone() for k, v in linears.state_dict().items()},
    )


# Files of the base directory that still hold for the fine-tuned one (its prompts, its origin).
CARRIED = ("config_sentence_transformers.json", "PROVENANCE.md", "provenance.json")


def _save_encoder(model: Any, tokenizer: Any, out_dir: Path, source: Path | None = None) -> str:
    """Write the Hugging Face directory (safetensors only); its weights' digest, the heads' encoder version."""
    import shutil

    from pipelines.registry import file_digest

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in CARRIED:
        if source is not None and (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    for stray in list(out_dir.glob("*.bin")) + list(out_dir.glob("*.pt")):
        stray.unlink()
    return file_digest(sorted(out_dir.glob("*.safetensors")))


def _save_task_head(t: _Task, out_dir: Path, hidden: int, version: str, files: str, info: dict[str, Any]) -> None:
    """``out_dir/heads/<task>``: the task's linear layer as a Head over the fine-tuned encoder's last layer."""
    history, best_epoch, window = info["history"], info["best_epoch"], info["window"]
    spec = HeadSpec(
        name=t.name,
        labels=list(t.data.labels),
        input_dim=hidden,
        layers=[-1],
        hidden=0,
        dropout=0.0,
        encoder={
            "name": out_dir.name,
            "version": version,
            "files": files,
            "train_window_tokens": window,
        },
    )
    head = Head(spec)
    with torch.no_grad():
        head.net[-1].weight.copy_(t.linear.weight)
        head.net[-1].bias.copy_(t.linear.bias)
    spec.training = {
        "mode": "finetune",
        "dataset": t.data.name,
        "dataset_fingerprint": t.data.fingerprint,
        **{k: v for k, v in info.items() if k != "history"},
    }
    spec.metrics = {
        "best_epoch": best_epoch,
        "val": {"macro_f1": history["val_macro_f1"][best_epoch - 1][t.name]},
        "curves": {
            "epoch": history["epoch"],
            "train_loss": history["train_loss"],
            "val_macro_f1": [v[t.name] for v in history["val_macro_f1"]],
        },
    }
    save_head(head, out_dir / "heads" / t.name)
