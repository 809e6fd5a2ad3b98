# Inside Face Recognition — the two commands: `make book` and `make test` (see README.md).
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PROFILE ?= default
# Real data: $FACESTUDY_DATA if set, else ../shared/data when it exists beside the checkout.
SHARED_DATA := $(abspath ../shared/data)
FACESTUDY_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)
export FACESTUDY_DATA
# glibc malloc: keep big torch buffers instead of mmap/munmap per batch (2-3x faster on CPU; see
# facestudy.runtime.MALLOC_ENV, which `facestudy run` also passes to every kernel).
export MALLOC_MMAP_THRESHOLD_ ?= 4294967296
export MALLOC_TRIM_THRESHOLD_ ?= 68719476736
export MALLOC_TOP_PAD_ ?= 1073741824
# OpenMP threads sleep at barriers instead of spinning (facestudy.runtime; a shared CPU collapses otherwise)
export OMP_WAIT_POLICY ?= PASSIVE
# ... except in book's cold stages, which run alone: ACTIVE unless you set OMP_WAIT_POLICY yourself
STAGE_OMP = $(if $(filter environment command,$(origin OMP_WAIT_POLICY)),$(OMP_WAIT_POLICY),ACTIVE)

.PHONY: all venv book chapters html test lint clean
all: book

$(BIN)/facestudy: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name python3 --display-name "Python 3" >/dev/null
	@touch $@

venv: $(BIN)/facestudy

# The main job: the two cold stages (progress bars) - chapter 2's generator; chapter 4's templates of every
# real face and its SAEs -, every chapter at $(PROFILE) with papermill, then the HTML with -W. The stages run
# alone, so their OpenMP threads spin-wait (ACTIVE): chapter 2's small latent UNet runs 2x faster than under
# facestudy's contention-safe PASSIVE default (0.29 vs 0.6 s a step).
book: venv
	$(BIN)/facestudy data prepare --quiet
	OMP_WAIT_POLICY=$(STAGE_OMP) $(BIN)/facestudy train 02_uiface generator --profile $(PROFILE)
	OMP_WAIT_POLICY=$(STAGE_OMP) $(BIN)/facestudy train 04_facemint saes --profile $(PROFILE)
	$(BIN)/facestudy run all --profile $(PROFILE) --quiet
	$(MAKE) html
	@echo "The book: $(CURDIR)/_build/html/index.html"

html: venv
	$(BIN)/facestudy scorecard --records book/executed --out book/executed/scorecard.md
	$(BIN)/jupyter-book build . -W -n --keep-going

# Two pytest workers with one thread each (pytest-xdist; two 2-thread workers on two cores collapse, issue 21);
# TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
PYTEST_PAR := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)
test: venv
	$(if $(PYTEST_PAR),OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} )$(BIN)/python -m pytest -q --durations=25 $(PYTEST_PAR)

lint: venv
	$(BIN)/ruff check lib tests benchmarks

clean:
	rm -rf _build book/executed
