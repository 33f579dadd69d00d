# bagnet-repro. Two commands to start: `make demo`, `make test`. See README.md.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUN    := $(PY) -m bagnet.run
# cpu profile unless a GPU is visible; override with PROFILE=gpu|cpu
PROFILE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
DATA_ROOT ?=
DATA_ARG := $(if $(DATA_ROOT),data.root=$(abspath $(DATA_ROOT)))
MODEL ?= bagnet33
DATA ?= synthetic
ARGS ?=

.PHONY: setup test test-full test-slow lint demo demo-seeds train train-bagnet33 sweep-patch reproduce-table1 signatures heatmaps \
        eval-imagenet train-imagenette reproduce-imagenette reproduce-paper bench bench-gpu render-results

setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

test: setup   # a worker per core (pytest-xdist), each with its share of torch's threads (tests/conftest.py)
	$(PY) -m pytest -q -n auto

test-full: test test-slow

lint: setup   # ruff, configured in pyproject.toml ([tool.ruff])
	$(PY) -m ruff check .

test-slow: setup
	$(PY) -m pytest -q -m slow

# the documents' number blocks are re-rendered from the new results/demo/ (README.md quotes it)
demo: setup
	$(RUN) experiment=demo $(ARGS)
	$(PY) scripts/render_results.py --documents

# the demo with seeds 1 and 2 -> results/demo/seed1, seed2; results/demo/README.md gains the spread across seeds
demo-seeds: setup
	$(RUN) -m experiment=demo seed=1,2 'out_dir=$${paths.results_dir}/demo/seed$${seed}' $(ARGS)
	$(PY) scripts/render_results.py results/demo
	$(PY) scripts/render_results.py --documents

train: setup
	$(RUN) task=train model=$(MODEL) data=$(DATA) $(DATA_ARG) profile=$(PROFILE) $(ARGS)

train-bagnet33: setup
	$(RUN) task=train model=bagnet33 data=scene15 $(DATA_ARG) profile=$(PROFILE) $(ARGS)

sweep-patch: setup
	$(RUN) -m task=train model=bagnet model.patch_size=9,17,33 data=$(DATA) $(DATA_ARG) profile=$(PROFILE) $(ARGS)
	$(PY) scripts/collect_sweep.py $${BAGNET_RUNS_DIR:-runs}/train/$(DATA) --out results/sweep_patch/$(DATA)

# Table 1 by the report's protocol (configs/experiment/table1.yaml). INIT=imagenet (the report's: authors'
# BagNet release + pytorchcv ImageNet weights, checked before training; offline: put the files in
# BAGNET_WEIGHTS_DIR) or INIT=scratch (random init). -> results/table1/<profile>-<init>/
INIT ?= imagenet
reproduce-table1: setup
	$(RUN) experiment=table1 init=$(INIT) data=scene15 $(DATA_ARG) profile=$(PROFILE) $(ARGS)
	$(PY) scripts/render_results.py results/table1   # + results/table1/table1.{csv,md}: every profile side by side

# the four signatures + heatmaps + patches on the Table 1 runs of INIT=imagenet|scratch (make reproduce-table1
# INIT=... first) and a VGG-16 trained by the same recipe (trained here first, or reused; INIT=imagenet starts it
# from torchvision's ImageNet weights) -> results/signatures/scene15/<profile>-<init>/
signatures: setup
	$(RUN) task=train experiment=table1 init=$(INIT) $(if $(filter imagenet,$(INIT)),model=vgg16 model.pretrained=true,model=vgg16_bn) \
	  trainer.fused_optimizer=true $(DATA_ARG) profile=$(PROFILE) $(ARGS)
	$(RUN) experiment=signatures init=$(INIT) $(DATA_ARG) profile=$(PROFILE) $(ARGS)

# heatmaps and predictive patches of the demo's trained BagNets (make demo first) -> runs/heatmaps/demo/;
# IMAGES=<file or folder>: your own image files instead (a figure each; a folder named like a class is its label)
IMAGES ?=
heatmaps: setup
	$(RUN) task=heatmaps experiment=demo out_dir=runs/heatmaps/demo $(if $(IMAGES),experiments.heatmaps.images=$(abspath $(IMAGES))) $(ARGS)
	$(RUN) task=patches experiment=demo out_dir=runs/patches/demo $(ARGS)

# Imagenette2 from scratch (configs/experiment/imagenette.yaml): the five models one after the other, ~1 h each on
# 2 cores; resumable (run it again after an interruption). BAGNET_RUNS_DIR=/outside/the/clone keeps the runs for a later clone.
IMAGENETTE_MODELS ?= resnet50,bagnet33,bagnet17,bagnet9,resnet18
IMAGENETTE_ARG := $(if $(DATA_ROOT),data.root=$(abspath $(DATA_ROOT)))
train-imagenette: setup
	$(RUN) -m task=train experiment=imagenette model=$(IMAGENETTE_MODELS) $(IMAGENETTE_ARG) $(ARGS)

# the paper on real ImageNet photos (configs/experiment/imagenette.yaml): trains what is not trained yet (as
# train-imagenette), then every experiment of the pipeline -> results/imagenette/. Data: scripts/get_imagenette.py
reproduce-imagenette: setup
	$(RUN) experiment=imagenette $(IMAGENETTE_ARG) $(ARGS)
	$(PY) scripts/render_results.py --documents

eval-imagenet: setup
	$(RUN) experiment=eval_imagenet $(if $(IMAGENET_ROOT),data.root=$(abspath $(IMAGENET_ROOT))) $(if $(BAGNET_WEIGHTS_DIR),weights_dir=$(abspath $(BAGNET_WEIGHTS_DIR))) $(ARGS)

# the paper's ImageNet experiments (results/paper/README.md); resumable: re-run after an interruption
reproduce-paper: setup
	$(RUN) experiment=paper $(if $(IMAGENET_ROOT),data.root=$(abspath $(IMAGENET_ROOT))) \
	  $(if $(BAGNET_WEIGHTS_DIR),weights_dir=$(abspath $(BAGNET_WEIGHTS_DIR))) $(ARGS)

# CPU benchmarks (~35 min on 2 cores; run them on a quiet machine; DATA_ROOT=15-Scene for data loading): results/bench/<machine>/ + README.md
bench: setup
	$(PY) scripts/bench_heatmap.py
	$(PY) scripts/bench_train.py
	$(if $(DATA_ROOT),$(PY) scripts/bench_data.py --root $(abspath $(DATA_ROOT)),@echo "bench_data skipped: make bench DATA_ROOT=/path/to/scene15 measures data loading")
	$(PY) scripts/bench_compile.py

# The GPU profile (CUDA img/s, TF32/bf16/fp32, torch.compile on/off, loading from disk), same format
bench-gpu: setup
	$(PY) scripts/bench_gpu.py

render-results: setup
	$(PY) scripts/render_results.py
