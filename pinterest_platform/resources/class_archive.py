"""The local Spark driver's class-data-sharing archive (JDK AppCDS): the classes a Spark job loads, parsed
and verified once, then mapped into every later driver JVM instead of being read again from ~300 jars.

Measured on this project's 2-core machine: a local SparkSession starts in 3.3-3.6 s instead of 6-9 s and
the first cleaning job of a process takes 7 s instead of 11 s, in every process that starts Spark (each
CLI command, each Dagster run, each test session). `make install` builds the archive
(`python -m pinterest_platform.resources.class_archive`) by running a small job of every kind the platform
runs under `-XX:ArchiveClassesAtExit`. It belongs to one JVM and one set of jars: its file name carries a
fingerprint of both, so a changed JDK, pyspark or jar simply finds no archive and Spark starts as before
(`make install` builds the new one). A JVM that maps a truncated archive crashes, so an archive is only
used when its recorded size matches, and only written under its final name once complete."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# set in the building process: local_spark_session() then dumps the classes its driver loaded at exit
DUMP_ENV = "PINTEREST_CLASS_ARCHIVE_DUMP"
# set to 0 to start Spark without the archive (e.g. to compare)
USE_ENV = "PINTEREST_CLASS_ARCHIVE"


def _java_home() -> Path | None:
    """The JDK spark-submit starts: JAVA_HOME's, else the `java` on PATH."""
    if os.environ.get("JAVA_HOME"):
        return Path(os.environ["JAVA_HOME"]).resolve()
    java = shutil.which("java")
    return Path(java).resolve().parent.parent if java else None


def _driver_jars() -> list[Path]:
    """The jars on the local driver's class path: the platform's (Delta, S3A) and pyspark's."""
    import pyspark

    from pinterest_platform.resources.spark import delta_jars, s3_jars

    ours = [Path(p) for p in (*delta_jars(), *s3_jars())]
    return ours + sorted(Path(pyspark.__file__).parent.joinpath("jars").glob("*.jar"))


def fingerprint(java_options: str) -> str | None:
    """A digest of what the archive depends on: the JVM (its libjvm), every driver jar and the driver's JVM
    options; None without a JDK."""
    home = _java_home()
    if home is None:
        return None
    libjvm = next(iter(sorted(home.glob("lib/server/libjvm.*"))), home / "bin" / "java")
    digest = hashlib.sha256(java_options.encode())
    for path in (libjvm, *_driver_jars()):
        stat = path.stat()
        digest.update(f"\n{path}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def archive_dir() -> Path:
    from pinterest_platform.resources.spark import jars_dir

    return jars_dir() / "_class_archive"


def archive_path(java_options: str) -> Path | None:
    digest = fingerprint(java_options)
    return None if digest is None else archive_dir() / f"spark-driver-{digest}.jsa"


def _complete(archive: Path) -> bool:
    """Whether `archive` is the whole file its build wrote (its size is recorded beside it)."""
    try:
        recorded = json.loads(archive.with_suffix(".json").read_text())["bytes"]
        return archive.stat().st_size == recorded
    except (OSError, ValueError, KeyError, TypeError):
        return False


def java_options(base_options: str) -> str:
    """The driver's JVM options for the archive, given its other options: dump it while building, map it
    when a complete archive of this JVM and these jars exists, else nothing."""
    dump = os.environ.get(DUMP_ENV)
    if dump:
        return f"-XX:ArchiveClassesAtExit={dump}"
    if os.environ.get(USE_ENV, "1").strip() == "0":
        return ""
    try:
        archive = archive_path(base_options)
    except (OSError, RuntimeError):  # no jars yet: Spark's own start reports that
        return ""
    return f"-XX:SharedArchiveFile={archive}" if archive is not None and _complete(archive) else ""


def _workload() -> None:
    """One small job of each kind the platform runs, so their classes are in the archive: cleaning (JSON and
    variant parsing, patterns, windows, a checkpoint), Delta appends, MERGE and overwrites, Arrow
    collection and the analytics' joins and aggregations."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from pinterest_platform import contract
    from pinterest_platform.jobs import batch as jobs
    from pinterest_platform.resources.spark import local_spark_session
    from pinterest_platform.transforms.analytics import compute_all
    from pinterest_platform.transforms.cleaning import clean, cleaned_rows, latest_per_key, quarantine_rows

    spark = local_spark_session()
    # the platform's jobs build driver-side frames from Arrow (`driver_rows`), so the workload does too
    record_schema = T.StructType([T.StructField(c, T.StringType()) for c in ("value", "source", "origin")])
    samples = {
        "pin": ['{"index": 1, "unique_id": "u1", "title": "t", "description": "d", "follower_count": "26k",'
                ' "poster_name": "p", "tag_list": "a,b", "is_image_or_video": "image", "image_src": "s",'
                ' "downloaded": 1, "save_location": "Local save in /data", "category": "c"}', "{'bad': 1}"],
        "geo": ['{"ind": 1, "timestamp": "2020-01-01 10:00:00", "latitude": 1.5, "longitude": -2.5,'
                ' "country": "X"}'],
        "user": ['{"ind": 1, "first_name": "A", "last_name": "B", "age": 30,'
                 ' "date_joined": "2016-01-01 10:00:00"}'],
    }
    with tempfile.TemporaryDirectory(prefix="pinterest-class-archive-") as lake:
        tables = {}
        for kind, values in samples.items():
            records = jobs.driver_rows(spark, [(v, "topic", f"o{i}") for i, v in enumerate(values)], record_schema)
            cleaned = clean(kind, records).localCheckpoint(eager=True)
            uri = f"{lake}/{kind}"
            jobs.ensure_table(spark, uri, contract.CLEANED_SCHEMAS[kind])
            rows = latest_per_key(cleaned_rows(kind, cleaned))
            jobs.append_new_rows(spark, uri, rows)
            jobs.upsert_by_ind(spark, uri, rows, contract.CLEANED_SCHEMAS[kind], (0, 10))
            quarantine_rows(kind, cleaned).toArrow()
            tables[kind] = spark.read.format("delta").load(uri)
        for name, output in compute_all(tables["pin"], tables["geo"], tables["user"]).items():
            rows = output.collect()
            jobs.driver_rows(spark, rows, contract.ANALYTICS_SCHEMAS[name]).write.format("delta").mode(
                "overwrite").save(f"{lake}/{name}")
        spark.read.format("delta").load(f"{lake}/pin").agg(F.count(F.lit(1))).first()
        # the raw files' readers: whole text files and their JSON index
        raw = Path(lake, "raw.json")
        raw.write_text("".join(f"{v}\n" for v in samples["geo"]))
        spark.read.text(str(raw), wholetext=True).select(F.split("value", "\n", -1)).toArrow()
        spark.read.schema(jobs.INDEX_SCHEMA).json(str(raw)).collect()
    spark.stop()


def build(force: bool = False) -> Path | None:
    """Build the archive for this JVM and these jars unless a complete one exists; returns its path (None
    without a JDK). Older archives (other JVMs or jars) are removed."""
    from pinterest_platform.resources.spark import DRIVER_BASE_JAVA_OPTIONS

    target = archive_path(DRIVER_BASE_JAVA_OPTIONS)
    if target is None:
        print("no JDK found (JAVA_HOME or java on PATH): no class archive built", file=sys.stderr)
        return None
    if _complete(target) and not force:
        print(f"class archive up to date: {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    partial.unlink(missing_ok=True)
    print("building the Spark driver's class archive (a small job of each kind, about a minute) ...", flush=True)
    # in-process Spark on a temporary folder lake, whatever the user's profile or cluster says
    env = {**os.environ, DUMP_ENV: str(partial), "PINTEREST_ENV": "local", "PINTEREST_SPARK_MASTER": "local[2]"}
    result = subprocess.run([sys.executable, "-m", "pinterest_platform.resources.class_archive", "--workload"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0 or not partial.is_file() or partial.stat().st_size == 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"building the class archive failed (exit {result.returncode}):\n{result.stdout[-4000:]}")
    for old in target.parent.glob("spark-driver-*"):  # other JVMs' or jars', and this one's if incomplete
        if old != partial:
            old.unlink(missing_ok=True)
    # the size first, then the archive under its final name: until both are there it is not used
    target.with_suffix(".json").write_text(json.dumps({"bytes": partial.stat().st_size}))
    partial.replace(target)
    print(f"class archive ready: {target} ({target.stat().st_size / 2**20:,.0f} MiB)")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the local Spark driver's class-data-sharing archive.")
    parser.add_argument("--force", action="store_true", help="rebuild even when an archive is up to date")
    parser.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workload:
        _workload()
        return 0
    try:
        build(force=args.force)
    except RuntimeError as error:
        # an optional speed-up (e.g. a JVM without class-data sharing): the install goes on without it
        print(f"class archive not built; Spark starts without it, about 3 s slower: {error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
