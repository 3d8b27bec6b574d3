# udip: the two commands are `make demo` and `make test`; both set up what they need and are
# idempotent (a second run reuses the venv, the cohort and unchanged results).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
export UDIP_HOME ?= $(CURDIR)/.udip

DEMO_NAME     ?= demo
DEMO_SUBJECTS ?= 3000
DEMO_SEED     ?= 0
# Training needs far fewer scans than the GWAS: a fixed 360 train / 40 val, the rest is the GWAS set.
DEMO_TRAIN    ?= 360
DEMO_VAL      ?= 40
DEMO_PRESET   ?= demo
# Loci are counted for the checkpoints of epochs 5 and 10 (each costs an encoding of the GWAS set).
DEMO_SWEEP_EVERY ?= 5
# Extra model options, e.g. make demo DEMO_MODEL_ARGS='--epochs 60' DEMO_OVERRIDES='{"enc_depth":8}'
# (the overrides are JSON and go to the shell single-quoted, so their double quotes survive).
DEMO_MODEL_ARGS ?=
DEMO_OVERRIDES  ?=

.PHONY: install demo test test-tools lint ui mlflow-ui where

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: 2.13.0 is a CPU build on this machine's disk; anything looser would let
# the resolver pull a multi-GB CUDA build. requirements.lock pins everything else.
$(STAMP): pyproject.toml requirements.lock | $(BIN)/python
	$(PIP) install torch==2.13.0 -c requirements.lock
	$(PIP) install -e '.[dev]' -c requirements.lock
	@touch $@

# dagster-dbt reads dbt_annotations/target/manifest.json at import: prepared the dagster-dbt way
# (`dagster-dbt project prepare-and-package`, i.e. `dbt parse`) whenever a model, seed or .yml is
# newer than it; a no-op otherwise. The preparer runs the venv's dbt, hence the PATH.
DBT_MANIFEST := dbt_annotations/target/manifest.json
DBT_SOURCES  := $(shell find dbt_annotations \( -name target -o -name logs \) -prune -o \
                  \( -name '*.sql' -o -name '*.yml' -o -name '*.csv' \) -print)
$(DBT_MANIFEST): $(STAMP) $(DBT_SOURCES)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dagster-dbt project prepare-and-package \
	  --file udip_assets/defs/dbt_project.py >/dev/null
	@touch $@

install: $(DBT_MANIFEST)

demo: install
	$(BIN)/udip synth --name $(DEMO_NAME) --subjects $(DEMO_SUBJECTS) --resolution 2 --seed $(DEMO_SEED)
	$(BIN)/udip materialize --cohort $(DEMO_NAME) --train-count $(DEMO_TRAIN) --val-count $(DEMO_VAL) \
	  --preset $(DEMO_PRESET) --sweep-every $(DEMO_SWEEP_EVERY) $(DEMO_MODEL_ARGS) \
	  $(if $(DEMO_OVERRIDES),--overrides '$(DEMO_OVERRIDES)')
	$(BIN)/udip sql "SELECT status, count(*) AS n FROM scans WHERE cohort = '$(DEMO_NAME)' GROUP BY 1 ORDER BY 2 DESC"
	$(BIN)/udip sql "SELECT split, kept, count(*) AS n FROM subjects WHERE cohort = '$(DEMO_NAME)' GROUP BY ALL ORDER BY ALL"
	$(BIN)/udip sql "SELECT s.model_id, s.epoch, round(c.val_loss, 4) AS val_loss, s.loci_count, s.selected FROM model_selection s JOIN checkpoints c USING (model_id) WHERE s.cohort = '$(DEMO_NAME)' ORDER BY s.epoch"
	$(BIN)/udip sql "SELECT method, \"GenomicLocus\" AS locus, chr, start, \"end\", p, \"nLeadSNPs\" AS n_lead, dim, dims FROM genomic_risk_loci g WHERE cohort = '$(DEMO_NAME)' AND model_id = (SELECT model_id FROM model_selection WHERE cohort = '$(DEMO_NAME)' AND selected) ORDER BY 1, 2"
	$(BIN)/udip perdi --cohort $(DEMO_NAME) --top 3
	$(BIN)/udip sql "SELECT layer, count(*) FILTER (WHERE is_spotlight) AS n_spotlight, round(max(attention_in), 4) AS max_attention_in FROM attention_spotlight WHERE cohort = '$(DEMO_NAME)' AND model_id = (SELECT model_id FROM model_selection WHERE cohort = '$(DEMO_NAME)' AND selected) GROUP BY 1 ORDER BY 1"
	$(BIN)/udip truth --cohort $(DEMO_NAME) --control
	@$(BIN)/udip where

# PLINK 2 and PLINK 1.9 from Debian are the independent references of the GWAS and clumping tests;
# Debian's chromium is the browser of the UI test (driven by Playwright; never `playwright install`);
# slurm-wlm and munge run the one-node SLURM cluster the cluster tests start. command:package pairs.
TEST_TOOLS := plink2:plink2 plink1.9:plink1.9 chromium:chromium munged:munge slurmctld:slurm-wlm \
              slurmd:slurm-wlm sbatch:slurm-wlm
test-tools:
	@missing=""; for pair in $(TEST_TOOLS); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	missing=$$(echo $$missing | xargs -n1 | sort -u | xargs); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "$$missing not found and cannot apt-get install them here: run 'sudo apt-get install $$missing'; the tests that need them will be skipped (and fail under CI=true)"; \
	  fi; \
	fi

test: install test-tools
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check udip_assets udip_assets_tests benchmarks

ui: install
	@$(BIN)/python -c "from udip_assets.defs.run import ensure_dagster_home; ensure_dagster_home()"
	DAGSTER_HOME=$(UDIP_HOME)/dagster $(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

# The MLflow UI needs the full mlflow package (the pipeline itself uses mlflow-skinny): installed on
# first use, at the version of the installed mlflow-skinny.
mlflow-ui: install
	@$(BIN)/python -c "import flask, mlflow.server" 2>/dev/null || $(PIP) install "mlflow==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("mlflow-skinny"))')"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(UDIP_HOME)/mlflow.db --host 127.0.0.1 --port 5000

where: install
	@$(BIN)/udip where
