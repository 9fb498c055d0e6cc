"""Loading the code location imports nothing heavy (issue 13 item 6): the UI, sensors and schedules start
without pyspark, pyarrow, deltalake, pandas, boto3/botocore or confluent_kafka, which only the runs need.

Each profile is loaded in a fresh interpreter (this test process has imported them all long ago) the way
Dagster loads it: `import pinterest_platform.definitions`, then the repository built from `defs`."""

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("pyspark", "pyarrow", "deltalake", "pandas", "boto3", "botocore", "confluent_kafka")

LOAD = f"""
import json, sys
import pinterest_platform.definitions as definitions
repo = definitions.defs.get_repository_def()
assert repo.has_job("batch_job")
repo.asset_graph.get_all_asset_keys()
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


@pytest.mark.parametrize("profile", ["local", "aws"])
def test_loading_the_code_location_imports_nothing_heavy(profile):
    env = {**os.environ, "PINTEREST_ENV": profile}
    done = subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported == [], f"loading the {profile} code location imported {imported}"


def test_source_table_columns_match_the_source_tables():
    """assets/source.py writes the source tables' columns out (so the code location needs no SQLAlchemy):
    they must be those of datagen's table definitions, the ones the seed creates."""
    from pinterest_platform.assets.source import SOURCE_TABLE_COLUMNS
    from pinterest_platform.datagen.generator import source_tables

    assert SOURCE_TABLE_COLUMNS == {name: tuple((c.name, str(c.type), c.nullable) for c in table.columns)
                                    for name, table in source_tables().items()}
