# Every target sets up what it needs: a .venv in the repo with the project installed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests never reach a model hub or W&B; pytest's exit code 5 ("no tests collected") is a pass.
TEST_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
PYTEST := $(TEST_ENV) $(PY) -m pytest

.DEFAULT_GOAL := help
.PHONY: help install demo test test-all lint format bench bench-quality bench-timesteps bench-evidence bench-scenes bench-heldout bench-dift-sources bench-ablations mutation clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project (editable, with dev extras)

demo: $(STAMP) ## The whole method on the embedded default: distil Fashion-MNIST scenes, train students, print the table
	$(PY) -m distill.demo

test: $(STAMP) ## Fast test suite (slow tests excluded; under 10 minutes on 2 cores)
	$(PYTEST) -m "not slow" -q; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

test-all: $(STAMP) ## Every test, slow ones included
	$(PYTEST) -q; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## Format and auto-fix with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP) ## Speed benchmarks (fast path vs naive reference; writes results/*.json)
	$(PY) benchmarks/score_bench.py
	@if [ -f benchmarks/student_bench.py ]; then $(PY) benchmarks/student_bench.py; fi
	$(PY) benchmarks/loader_bench.py
	$(PY) benchmarks/fewer_draws.py

bench-quality: $(STAMP) ## Small-scale reproduction on Fashion-MNIST: probe, both protocols, diagnosis, settings chosen on held-out items -> results/fashion.md (hours on 2 cores from scratch; reruns reuse finished runs)
	$(TEST_ENV) $(PY) benchmarks/fashion_probe.py
	$(TEST_ENV) $(PY) benchmarks/lowres_evidence.py
	$(TEST_ENV) $(PY) benchmarks/scene_evidence.py
	$(TEST_ENV) $(PY) benchmarks/evidence_diagnosis.py
	$(TEST_ENV) $(PY) benchmarks/heldout_variants.py
	$(TEST_ENV) $(PY) benchmarks/fashion_report.py

bench-ablations: $(STAMP) ## The older scene benchmark and its ablations (about 3.5 h; results/fashion_ablations.md)
	$(PY) benchmarks/fashion_quality.py

bench-timesteps: $(STAMP) ## Stage I timestep schemes vs a 64-draw reference on the embedded model (about 6-12 min; results/timestep_schemes.md)
	$(TEST_ENV) $(PY) benchmarks/timestep_schemes.py

bench-scenes: $(STAMP) ## Scene protocol at the paper's geometry (64:56:28:56): Ours^C, Ours^S vs random and teacher crops (hours; results/scene_evidence.md)
	$(TEST_ENV) $(PY) benchmarks/scene_evidence.py

bench-dift-sources: $(STAMP) ## DIFT cropped from the image latent or map vs the exact per-patch path: cluster and pick agreement (about 4 min; results/dift_sources.md)
	$(TEST_ENV) $(PY) benchmarks/dift_sources.py

bench-heldout: $(STAMP) ## Timestep range and cluster count chosen on held-out training items, then tested once (about 45 min after bench-evidence; results/heldout_variants.md)
	$(TEST_ENV) $(PY) benchmarks/heldout_variants.py

bench-evidence: $(STAMP) ## Paper's low-resolution protocol on real Fashion-MNIST items: ours vs random, herding, k-center, teacher (hours; results/lowres_evidence.md)
	$(TEST_ENV) $(PY) benchmarks/lowres_evidence.py

.PHONY: bench-scale
bench-scale: $(STAMP) ## ImageNet-1K scale without the U-Net: listing, merge, cluster, load, materialise at 10/100/1000 x 300 images, projected to 1.3M (results/scale_bench.json)
	$(TEST_ENV) $(PY) benchmarks/scale_bench.py

# mutmut runs the unit tests of [tool.mutmut] (pyproject.toml) against every mutant of the
# method's and protocol's arithmetic; slow (tens of minutes), so never part of `make test`.
MUTMUT_CHILDREN ?= 2
mutation: $(STAMP) ## Mutation testing of the method's and protocol's arithmetic (slow; results/mutation.md)
	@$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install 'mutmut>=3.3,<4'
	$(TEST_ENV) $(VENV)/bin/mutmut run --max-children $(MUTMUT_CHILDREN) || true
	$(PY) benchmarks/mutation_report.py

clean: ## Remove build artefacts and caches (keeps .venv and outputs/)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache mutants
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +

# DD-Ranking (pip's ddranking) pins numpy<2 and scipy<1.16, so it gets a venv of its own,
# .venv-ddranking (several GB: it brings its own torch). tests/test_export.py runs the same
# check when that venv exists, and skips it otherwise (CI).
.PHONY: ddranking-check
ddranking-check: $(STAMP) ## Our exports read by DD-Ranking's own code (installs .venv-ddranking once; then about 15 s)
	@test -x .venv-ddranking/bin/python || ($(PYTHON) -m venv .venv-ddranking && .venv-ddranking/bin/pip install ddranking)
	$(TEST_ENV) $(PY) benchmarks/ddranking_check.py
