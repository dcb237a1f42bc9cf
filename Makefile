# Two entry points, both self-contained on a fresh machine:
#   make demo   -- set up a lean .venv-demo (CPU torch, the package), run the demo spec
#   make test   -- set up .venv, run the test suite (what CI runs)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test test-fast test-slow test-threads test-numerics fuzz test-recipes matrix mutate mutate-clean lint docs docs-serve bench guard-bench clean

$(STAMP): pyproject.toml requirements-torch.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-torch.txt
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(STAMP)

setup: $(STAMP)

# The demo gets its own lean venv: CPU torch and the package, nothing else (no torchvision,
# no test or dev tools: make test keeps those in .venv). CPU torch comes from the PyTorch
# CPU index where this machine reaches it; otherwise torch==2.13.0 from the default index,
# which on the CI machine kind is a CPU build on disk (elsewhere without the CPU index it
# may be a CUDA build). Size and time: README ("The demo").
DEMO_VENV := .venv-demo
DEMO_STAMP := $(DEMO_VENV)/.installed
CPU_INDEX ?= https://download.pytorch.org/whl/cpu

$(DEMO_STAMP): pyproject.toml
	$(PY) -m venv $(DEMO_VENV)
	if curl -sf --max-time 10 -o /dev/null $(CPU_INDEX)/torch/; then \
		$(DEMO_VENV)/bin/pip install -q torch --index-url $(CPU_INDEX); \
	else \
		$(DEMO_VENV)/bin/pip install -q torch==2.13.0; \
	fi
	$(DEMO_VENV)/bin/pip install -q -e .
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(DEMO_VENV)/bin/pytest --unitablate-spec specs/resnet.yaml

# Headless Chromium renders the HTML report in one slow test (Debian package, needs root).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium not installed: the rendering test skips locally and fails under CI"

# One torch thread per xdist worker: two workers on two cores, no oversubscription
# (OpenMP threads spinning against a busy core are what makes a loaded machine crawl).
# Bytecode is written (a shell with PYTHONDONTWRITEBYTECODE set made every one of the
# suite's pytest subprocesses compile every module again, about 3 s each).
# `make test` runs lint, then every test, fast and slow, in one xdist run.
RUN_TESTS := env -u PYTHONDONTWRITEBYTECODE OMP_NUM_THREADS=1 $(BIN)/pytest -n 2
test: lint docs browser
	$(RUN_TESTS) -m "not recipe"

test-fast: $(STAMP)
	$(RUN_TESTS) -m "not slow"

test-slow: $(STAMP) browser
	$(RUN_TESTS) -m "slow and not recipe"

# The fast suite again under perturbed numerics: three torch threads per worker (another
# summation order than `make test`'s one) and torch.use_deterministic_algorithms (the
# root conftest reads UNITABLATE_TEST_THREADS). An assertion that holds for one CPU's
# rounding only fails here first. CI runs it after `make test`.
test-numerics: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE UNITABLATE_TEST_THREADS=3 $(BIN)/pytest -n 2 -m "not slow" \
		-p no:randomly

# Differential fuzzing, the long profile (tests/fuzz): hundreds of generated models against
# the test's own oracle through scan(), the engine and the plugin's JSON report. `make test`
# runs the same tests bounded and seeded; CI runs this after the other suites.
fuzz: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE OMP_NUM_THREADS=1 UNITABLATE_FUZZ=long $(BIN)/pytest \
		-p no:randomly tests/fuzz --hypothesis-show-statistics

# The CI recipe (examples/ci) run locally on the demo, and the demo from a built wheel:
# minutes each, so not in `make test`; CI runs them after it.
test-recipes: $(STAMP)
	$(RUN_TESTS) -m recipe

# The demo's expected outcomes again with two torch threads (`make test` runs them with one):
# one process at a time, so the two threads have the two cores. CI runs both.
test-threads: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE UNITABLATE_DEMO_THREADS=2 $(BIN)/pytest -p no:randomly \
		-m "slow or not slow" tests/demo/test_demo_spec_outcomes.py \
		tests/demo/test_demo_expected_outcomes.py

# Guard quality (docs/calibration.md): honest held-back seeds against destructive candidates,
# and the calibrated product path checked against the table. --small is CI's (the ResNet,
# two held-back seeds, about a minute); the full run (three architectures, ten held-back
# seeds each) is `$(BIN)/python -m unitablate_demo.guard_bench`.
guard-bench: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m unitablate_demo.guard_bench --small --out guard-bench

# The compatibility matrix (noxfile.py): the plugin's tests on the oldest pytest we claim,
# the newest, and the newest without pytest-xdist, each in its own virtualenv.
matrix: $(STAMP)
	$(BIN)/nox

# Mutation testing (mutmut; the modules are listed in pyproject.toml [tool.mutmut]) against
# the whole fast suite: hours, so not part of `make test`; .ci/mutate runs it in chunks as
# the scheduled job. CHUNK narrows it to packages or modules, paths under pytest_unitablate
# with dots or slashes (CHUNK=engine, CHUNK=core/scan, CHUNK="core/data core/layers").
# mutants/ is kept between runs, so the mutated copy and the suite's run that maps tests to
# functions are made once (`make mutate-clean` starts over; mutmut re-runs every mutant a
# CHUNK names). Ends with the per-module table and every survivor, and fails when a module
# kills fewer than MUTATE_MIN percent.
MUTATE_MIN ?= 90
# (a package's __init__ names its mutants pytest_unitablate.<package>.x...)
MUTATE_NAMES = $(foreach c,$(CHUNK),"$(subst .__init__,.x,pytest_unitablate.$(subst /,.,$(c:.py=)))*")
MUTATE_FILES = $(foreach c,$(CHUNK),--only 'pytest_unitablate/$(subst .,/,$(c:.py=))*')
mutate: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2 $(MUTATE_NAMES)
	$(BIN)/python tools/mutation_scores.py $(MUTATE_FILES) --survivors --min $(MUTATE_MIN)

mutate-clean:
	rm -rf mutants

# ruff (style, and TID253: no module-level torch in the torch-free layers), mypy --strict,
# and import-linter (the layer contract in pyproject.toml; docs/architecture.md).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

# The docs site (MkDocs, mkdocs.yml): the generated pages must be current (reference.md from
# the code, index.md from README.md), then a strict build (every internal link and anchor).
docs: $(STAMP)
	$(BIN)/python docs/gen_reference.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_evaluate.py
	$(BIN)/python benchmarks/bench_import.py
	$(BIN)/python benchmarks/bench_scan.py
	$(BIN)/python benchmarks/bench_chunks.py
	$(BIN)/python benchmarks/bench_threads.py
	$(BIN)/python benchmarks/bench_xdist.py
	$(BIN)/python benchmarks/bench_identity.py
	$(BIN)/python benchmarks/bench_named.py
	$(BIN)/python benchmarks/bench_big.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_bounds.py

clean:
	rm -rf $(VENV) $(DEMO_VENV) .nox mutants guard-bench
