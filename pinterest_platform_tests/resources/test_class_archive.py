"""The local driver's class archive: used only when complete and made for this JVM and these jars, and really
mapped by the driver Spark starts (its classes come from it, not from the jars)."""

import json
import subprocess
import sys
import textwrap

import pytest

from pinterest_platform.resources import class_archive
from pinterest_platform.resources.spark import DRIVER_BASE_JAVA_OPTIONS


@pytest.fixture
def archive_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(class_archive, "archive_dir", lambda: tmp_path)
    monkeypatch.delenv(class_archive.DUMP_ENV, raising=False)
    monkeypatch.delenv(class_archive.USE_ENV, raising=False)
    return tmp_path


def _write_archive(path, recorded_bytes, content=b"x" * 100):
    path.write_bytes(content)
    path.with_suffix(".json").write_text(json.dumps({"bytes": recorded_bytes}))


def test_a_complete_archive_is_mapped_and_an_incomplete_one_is_not(archive_dir):
    archive = class_archive.archive_path(DRIVER_BASE_JAVA_OPTIONS)
    assert archive.parent == archive_dir
    assert class_archive.java_options(DRIVER_BASE_JAVA_OPTIONS) == ""  # none built
    _write_archive(archive, recorded_bytes=4096)  # a build cut short: the JVM would crash mapping it
    assert class_archive.java_options(DRIVER_BASE_JAVA_OPTIONS) == ""
    _write_archive(archive, recorded_bytes=100)
    assert class_archive.java_options(DRIVER_BASE_JAVA_OPTIONS) == f"-XX:SharedArchiveFile={archive}"


def test_the_user_can_turn_it_off_and_the_build_dumps_instead(archive_dir, monkeypatch):
    _write_archive(class_archive.archive_path(DRIVER_BASE_JAVA_OPTIONS), recorded_bytes=100)
    monkeypatch.setenv(class_archive.USE_ENV, "0")
    assert class_archive.java_options(DRIVER_BASE_JAVA_OPTIONS) == ""
    monkeypatch.setenv(class_archive.DUMP_ENV, "/tmp/x.jsa")
    assert class_archive.java_options(DRIVER_BASE_JAVA_OPTIONS) == "-XX:ArchiveClassesAtExit=/tmp/x.jsa"


def test_the_fingerprint_follows_the_jars_and_the_jvm_options(tmp_path, monkeypatch):
    jars = [tmp_path / "a.jar", tmp_path / "b.jar"]
    for jar in jars:
        jar.write_bytes(b"jar")
    monkeypatch.setattr(class_archive, "_driver_jars", lambda: jars)
    before = class_archive.fingerprint(DRIVER_BASE_JAVA_OPTIONS)
    assert class_archive.fingerprint(DRIVER_BASE_JAVA_OPTIONS) == before
    assert class_archive.fingerprint(DRIVER_BASE_JAVA_OPTIONS + " -XX:+UseG1GC") != before
    jars[1].write_bytes(b"another jar")  # a pyspark or Delta upgrade: the old archive no longer matches
    assert class_archive.fingerprint(DRIVER_BASE_JAVA_OPTIONS) != before


def test_the_driver_loads_its_classes_from_the_archive(tmp_path):
    # `make install` built the archive for this JVM and these jars; without it this test fails, never skips
    option = class_archive.java_options(DRIVER_BASE_JAVA_OPTIONS)
    assert option.startswith("-XX:SharedArchiveFile="), "no class archive for this JVM and jars: run `make install`"
    log = tmp_path / "classes.log"
    script = textwrap.dedent(f"""
        from pinterest_platform.resources.spark import local_spark_session, DRIVER_BASE_JAVA_OPTIONS
        options = DRIVER_BASE_JAVA_OPTIONS + " {option} -Xlog:class+load=info:file={log}"
        spark = local_spark_session({{"spark.driver.extraJavaOptions": options}})
        spark.range(10).write.format("delta").save("{tmp_path / 'table'}")
        spark.stop()
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, capture_output=True)
    loaded = {}
    for line in log.read_text().splitlines():
        # "[...][info][class,load] org.apache.spark.SparkContext source: shared objects file (top)"
        if "][class,load] " in line and " source: " in line:
            name, source = line.split("][class,load] ", 1)[1].split(" source: ", 1)
            loaded[name] = source
    from_archive = {n for n, s in loaded.items() if s.startswith("shared objects file (top)")}
    assert "org.apache.spark.SparkContext" in from_archive
    assert "org.apache.spark.sql.delta.DeltaLog" in from_archive
    # lambdas are made at run time; of the classes a jar holds, nearly all came from the archive (the few left
    # are ones the archive's workload never loaded, such as the range this script writes)
    from_jars = {n for n, s in loaded.items() if s.startswith(("file:", "jar:")) and n.startswith("org.apache.")}
    assert len(from_archive) > 3000
    assert len(from_jars) < 0.05 * len(from_archive), sorted(from_jars)[:20]
