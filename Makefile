# make repro: set up .venv and run the whole pipeline; make test: set up and run the tests.
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     ?= python3
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: setup repro repro-cpu test test-fast lint ui predict serve compare bench gpu-check clean

# The CPU preset (src/vitlens/train/preset.py): the recipe, in bf16 where the CPU has it
# natively and in fp32 elsewhere, for the epochs that fit here in the time of 20 fp32 epochs
# of the plain 0.81M-parameter model (`vitlens cpu-preset` times both and prints the flags).
# CPU_PRESET="..." sets them instead.
CPU_PRESET ?= $$(vitlens cpu-preset)

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	test -d .git || (git init -q && git add -A && git commit -qm "initial commit")
	touch $@

repro: setup
	dvc repro

repro-cpu: setup
	dvc exp run $(CPU_PRESET) $(EXTRA)

# One worker per core; a file's tests stay together on one worker, in file order (the
# end-to-end files build on their own earlier tests). Files go out in name order: xdist's
# default hands out the files with the most tests first, which leaves the few long
# end-to-end tests (DVC, servers) queued on one worker at the end.
PYTEST_PAR := -n auto --dist loadfile --no-loadscope-reorder

test: setup
	pytest -q $(PYTEST_PAR)

test-fast: setup
	pytest -q -m "not slow" $(PYTEST_PAR)

lint: setup
	ruff check src tests benchmarks
	mypy

ui: setup
	vitlens ui

# make predict IMAGES="photo.jpg shots/" EXTRA="--top-k 5 --out overlays"
predict: setup
	vitlens predict $(IMAGES) $(EXTRA)

# make serve EXTRA="--model-uri models:/vitlens-cifar10/1 --port 5001"
serve: setup
	vitlens serve $(EXTRA)

# make compare A=models/model.pt B=my-experiment EXTRA="--out reports/compare" (docs/compare.md)
compare: setup
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make compare A=<model, run or experiment> B=<...> [EXTRA=...]" >&2; exit 2; }
	vitlens compare $(A) $(B) $(EXTRA)

# The benches (docs/bench.md) live in benchmarks/, outside the installed package.
# make bench EXTRA="--quick"
bench: setup
	python -m benchmarks.bench $(EXTRA)

# The one-go GPU check (docs/gpu-check.md). No `setup`: it runs from a plain checkout with
# PyTorch and no venv, DVC, MLflow or git. EXTRA="--out DIR --budget-s SECONDS ..."
gpu-check:
	@test -n "$(ARCHIVE)" -a -n "$(MD5)" || { echo "usage: make gpu-check ARCHIVE=cifar-10-python.tar.gz MD5=<its md5> [EXTRA=...]" >&2; exit 2; }
	PYTHONPATH=src $(PY) -m benchmarks.gpucheck --archive $(ARCHIVE) --md5 $(MD5) $(EXTRA)

clean:
	rm -rf $(VENV) .pytest_cache
