# pinterest_platform: the two quick-start commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EVENTS ?= 2000
export PINTEREST_STATE_DIR ?= $(CURDIR)/.pinterest
export DAGSTER_HOME ?= $(PINTEREST_STATE_DIR)/dagster_home

.PHONY: install sysdeps jars class-archive java demo test dev stack-up stack-down stack-status bench lint clean

## install: system packages when missing, venv + pip upgrade + the package with dev extras + the JVM jars (Delta, S3A, Kafka) from Maven Central + the Spark driver's class archive
install: sysdeps $(VENV)/.installed jars class-archive

## sysdeps: Java 17+, Maven, MariaDB server, openssl; a fast check when all are there, else apt-get (root or
## passwordless sudo), else the exact command to run
sysdeps:
	@PYTHON=$(PYTHON) bash scripts/install_system_deps.sh

# order-only: the venv needs the system packages first, but a re-run of sysdeps must not rebuild it
$(VENV)/.installed: pyproject.toml | sysdeps
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is required"'
	$(PYTHON) -m venv $(VENV)
	# old pip backtracks for minutes on this dependency set: upgrade it first
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# kept as a name for the Java check, which sysdeps now does with the rest
java: sysdeps

jars: sysdeps $(VENV)/.installed
	PYTHON_FOR_JARS=$(BIN)/python ./jvm/fetch.sh

# the classes a Spark driver loads, parsed once into a JDK class-data-sharing archive: every later Spark start
# maps it (about 4 s sooner); a quick check when it is up to date for this JDK and these jars
class-archive: jars
	$(BIN)/python -m pinterest_platform.resources.class_archive

## demo: the whole pipeline end to end on the embedded local stack
demo: install
	$(BIN)/pinterest-platform demo --events $(EVENTS)

## test: everything the tests need, then the suite (starts its own stack and MariaDB)
test: install
	$(BIN)/pytest

## dev: the local stack and the Dagster UI on http://127.0.0.1:3000, same instance as the CLI
dev: install
	$(BIN)/pinterest-platform stack up
	@# the instance's dagster.yaml, written when missing (never over an edited one), as the CLI does
	$(BIN)/python -m pinterest_platform.instance
	@# `dagster dev` warns that `dg dev` supersedes it; `dg dev` needs the dg CLI and a dg project layout and,
	@# in 1.13, prints preview warnings of its own, so this one notice (matched by its text) is silenced here, nothing else
	PYTHONWARNINGS='ignore:Function `dev_command` is superseded' $(BIN)/dagster dev -h 127.0.0.1 -p 3000

stack-up: install
	$(BIN)/pinterest-platform stack up
stack-down:
	$(BIN)/pinterest-platform stack down
stack-status:
	$(BIN)/pinterest-platform stack status

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/batch.py
	$(BIN)/python bench/stream.py
	$(BIN)/python bench/code_location.py

lint:
	$(BIN)/ruff check pinterest_platform pinterest_platform_tests bench

clean: stack-down
	rm -rf $(PINTEREST_STATE_DIR)
