"""The local driver's heap follows the first job's raw files unless the user sets it; its collector is the parallel one."""

import pytest

from pinterest_platform.resources.spark import DRIVER_MEMORY_ENV, driver_memory, input_bytes

GIB = 2**30


@pytest.fixture(autouse=True)
def unset(monkeypatch):
    monkeypatch.delenv(DRIVER_MEMORY_ENV, raising=False)


def test_heap_is_one_gib_plus_half_the_raw_files_in_half_gib_steps():
    assert driver_memory(0) == "1024m"
    assert driver_memory(1) == "1536m"
    assert driver_memory(GIB) == "1536m"  # about the 1M-event batch
    assert driver_memory(GIB + 1) == "2048m"
    assert driver_memory(3 * GIB) == "2560m"


def test_heap_stays_within_four_gib_and_the_default_names_no_files():
    assert driver_memory(100 * GIB) == "4096m"
    assert driver_memory(None) == "1536m"


def test_a_users_setting_wins(monkeypatch):
    monkeypatch.setenv(DRIVER_MEMORY_ENV, "6g")
    assert driver_memory(0) == "6g"
    monkeypatch.setenv(DRIVER_MEMORY_ENV, "")  # as .env.example leaves it: sized from the data
    assert driver_memory(0) == "1024m"


def test_input_bytes_sums_the_files_of_every_kind():
    params = {"files": {"pin": [{"size": 10}, {"size": 5}], "geo": [], "user": [{"size": 1}]}}
    assert input_bytes(params) == 16
    assert input_bytes({"tables_root": "x"}) is None


def test_the_local_driver_collects_with_the_parallel_collector(spark):
    # measured faster than G1 on two cores at the same heap (resources/spark.py): the session really uses it
    beans = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()  # noqa: SLF001
    names = {bean.getName() for bean in beans}
    assert "PS Scavenge" in names and "PS MarkSweep" in names, names
