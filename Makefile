# WaveGlow toolkit: every everyday task is a make target. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON     ?= python3
VENV       ?= .venv
# torch is pinned here, not in pyproject.toml, so the build can be chosen. CUDA users:
#   make install TORCH_SPEC=torch==2.13.0 TORCH_INDEX='--index-url https://download.pytorch.org/whl/cu128'
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

PY    := $(VENV)/bin/python
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
# The torch build asked for: a change of TORCH_SPEC or TORCH_INDEX reinstalls torch.
TORCH_WANT  := $(TORCH_SPEC) $(TORCH_INDEX)
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s' '$(TORCH_WANT)' | cksum | cut -d' ' -f1)

# Training / synthesis defaults (override on the command line: make train MODEL=waveglow_512)
DATA   ?= ljspeech
MODEL  ?= waveglow_256
NPROC  ?= 1
ARGS   ?=
CKPT   ?=
MELS   ?=
OUT    ?= outputs/synth
GTA    ?=
INIT   ?=
# The audio preset of a corpus recorded at another rate (make train DATA=libritts -> audio=24k).
AUDIO_libritts ?= 24k
AUDIO  ?= $(AUDIO_$(DATA))
AUDIO_ARG = $(if $(AUDIO),audio=$(AUDIO))
LIBRITTS_SUBSETS ?= train-clean-100
LJSPEECH_URL    ?= https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2
LJSPEECH_SHA256 ?= be1a30453f28eb8dd26af4101ae40cbf2c50413b1bb21936cbcdc6fae3de8aa5

.PHONY: help install test test-all demo ljspeech vctk libritts preprocess train synthesize tensorboard bench gpu-check finetune-gta lint clean
.PHONY: eval

help: ## list the targets
	@echo "WaveGlow toolkit — make targets:"
	@if [ -t 1 ]; then on=$$(printf '\033[36m'); off=$$(printf '\033[0m'); else on=; off=; fi; \
	grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*?## "}; {printf "  %s%-12s%s %s\n", on, $$1, off, $$2}'
	@echo "Variables: DATA=$(DATA) MODEL=$(MODEL) NPROC=$(NPROC) TORCH_SPEC=$(TORCH_SPEC) ARGS='key=value ...'"

install: $(STAMP) ## create .venv and install the package (editable, with dev tools)

$(TORCH_STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	rm -f $(VENV)/.torch-*
	$(PY) -m pip install --quiet --force-reinstall --no-deps $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet "numpy>=1.23"  # torch is imported next: without numpy it warns "Failed to initialize NumPy"
	@$(PY) -c "import torch; print(f'installed torch {torch.__version__}, CUDA available: {\"yes\" if torch.cuda.is_available() else \"no\"}')"
	@touch $(TORCH_STAMP)

$(STAMP): pyproject.toml $(TORCH_STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Test processes (pytest-xdist), one per core of a 2-core machine; each computes on one thread,
# and the tests sharing a module or session fixture stay on one worker (tests/conftest.py).
# TEST_WORKERS=1: one process, no xdist.
TEST_WORKERS ?= 2
TEST_PARALLEL = $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

test: install ## run the test suite (CPU; CUDA cases skip without a GPU; TEST_WORKERS=2 processes)
	$(PY) -m pytest -q $(TEST_PARALLEL)

test-all: install ## the test suite including the slow cases
	$(PY) -m pytest -q -m "slow or not slow" $(TEST_PARALLEL)

demo: install ## train a tiny model on the bundled corpus and synthesize its held-out clips (~4.5 min on 2 idle CPU cores; THREADS=N sets the threads)
	DEMO_THREADS=$(THREADS) $(PY) scripts/demo.py

ljspeech: install ## download LJSpeech-1.1 (checksum verified, resumable) into data/ and write its splits
	$(BIN)/waveglow-download data=ljspeech data.download.url=$(LJSPEECH_URL) data.download.sha256=$(LJSPEECH_SHA256)

vctk: install ## download VCTK 0.92 (md5 verified, resumable) into data/VCTK-Corpus-0.92 and write its splits
	$(BIN)/waveglow-download data=vctk $(ARGS)

libritts: install ## download the LibriTTS subsets LIBRITTS_SUBSETS (sha256 verified, resumable) into data/LibriTTS
	$(BIN)/waveglow-download data=libritts "data.subsets=[$(LIBRITTS_SUBSETS)]" $(ARGS)

preprocess: install ## cache mels, manifest, splits and mel statistics for DATA
	$(BIN)/waveglow-preprocess data=$(DATA) $(AUDIO_ARG) $(ARGS)

train: install ## train MODEL on DATA (NPROC=N for torchrun DDP); resumes when run_dir exists
ifeq ($(NPROC),1)
	$(BIN)/waveglow-train data=$(DATA) model=$(MODEL) $(AUDIO_ARG) $(ARGS)
else
	$(BIN)/torchrun --standalone --nproc_per_node=$(NPROC) $(BIN)/waveglow-train data=$(DATA) model=$(MODEL) $(AUDIO_ARG) $(ARGS)
endif

synthesize: install ## vocode mel files: make synthesize CKPT=run/checkpoints/best.pt MELS=mels/ OUT=wavs/
	@test -n "$(CKPT)" || { echo "error: set CKPT=<checkpoint.pt>"; exit 2; }
	@test -n "$(MELS)" || { echo "error: set MELS=<mel file | dir | glob | filelist>"; exit 2; }
	$(BIN)/waveglow-synthesize "checkpoint=$(CKPT)" "input=$(MELS)" "output_dir=$(OUT)" $(ARGS)

finetune-gta: install ## fine-tune INIT (e.g. an imported NVIDIA model) on GTA mels: make finetune-gta INIT=checkpoints/nvidia_v5.pt GTA=data/LJSpeech-1.1/gta
	@test -n "$(INIT)" || { echo "error: set INIT=<checkpoint.pt> (e.g. from waveglow-import-nvidia)"; exit 2; }
	@test -n "$(GTA)" || { echo "error: set GTA=<folder of <clip id>.pt/.npy mels>"; exit 2; }
	$(BIN)/waveglow-train data=$(DATA) model=$(MODEL) "data.mel_dir=$(GTA)" "train.init_from=$(INIT)" train.lr=2e-5 $(ARGS)

tensorboard: install ## serve the training curves of every run under checkpoints/ (or LOGDIR=<folder of run dirs>) on localhost:6006
	$(BIN)/tensorboard --logdir $(or $(LOGDIR),checkpoints) --host 127.0.0.1 --port 6006

bench: install ## speed table (kHz, real-time factor, % of machine peak) for tiny, squeeze and waveglow_256
	$(BIN)/waveglow-bench $(ARGS)

# GPU_CHECKS: a subset of the checks, e.g. make gpu-check GPU_CHECKS=train,compile (compiled vs eager training).
GPU_CHECKS ?=
gpu-check: install ## everything CUDA in one run: CUDA tests, fp16/bf16 training, synthesis kHz + SNR, bench (< 8 min on one GPU)
	$(PY) scripts/gpu_check.py $(if $(GPU_CHECKS),--checks $(GPU_CHECKS))

# make eval: the demo run's best checkpoint on the demo corpus's test split unless told otherwise.
EVAL_CKPT = $(if $(CKPT),$(CKPT),checkpoints/demo-tiny/checkpoints/best.pt)
EVAL_DATA ?= demo
EVAL_OUT  ?= outputs/eval
eval: install ## objective metrics + report.html: make eval CKPT=<ckpt | run dir> [EVAL_DATA=demo EVAL_OUT=outputs/eval]
	$(BIN)/waveglow-eval "checkpoint=$(EVAL_CKPT)" data=$(EVAL_DATA) "output_dir=$(EVAL_OUT)" $(ARGS)

# make prune: a smaller model from CKPT (default: the demo run's best) keeping KEEP of every
# conditioner's channels; the pruned checkpoint goes to PRUNE_OUT (default outputs/prune/pruned-<KEEP>.pt).
KEEP ?= 0.5
PRUNE_CKPT = $(if $(CKPT),$(CKPT),checkpoints/demo-tiny/checkpoints/best.pt)
PRUNE_OUT ?= outputs/prune/pruned-$(KEEP).pt
.PHONY: prune
prune: install ## structured pruning: make prune CKPT=<ckpt> KEEP=0.5 [PRUNE_OUT=<pruned.pt>] (table + fine-tuning command)
	$(BIN)/waveglow-prune "checkpoint=$(PRUNE_CKPT)" keep=$(KEEP) "output=$(PRUNE_OUT)" $(ARGS)

# make distill: train STUDENT (a model config) to reproduce TEACHER (a checkpoint) on DATA; the
# objective is distill=regression unless ARGS says otherwise (docs/distillation.md).
TEACHER ?=
STUDENT ?= micro
.PHONY: distill
distill: install ## distillation: make distill TEACHER=<ckpt> STUDENT=squeeze [DATA=demo ARGS='distill=mixed run_dir=...']
	@test -n "$(TEACHER)" || { echo "error: set TEACHER=<checkpoint.pt> (the model to reproduce)"; exit 2; }
	$(BIN)/waveglow-distill "teacher=$(TEACHER)" student=$(STUDENT) data=$(DATA) $(AUDIO_ARG) $(ARGS)

lint: install ## ruff
	$(BIN)/ruff check waveglow tests scripts

clean: ## remove outputs and caches (keeps .venv, checkpoints/ and data/)
	rm -rf outputs .pytest_cache .ruff_cache data/demo/cache
	find . -name __pycache__ -type d -not -path './.venv/*' -prune -exec rm -rf {} +
