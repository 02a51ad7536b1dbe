"""The soak's memory verdict (tests/soak_memory.py): growth the resume store explains is flat."""

from __future__ import annotations

from tests.soak_memory import MIB, MemoryWatch, live_outside_store, slope_per_minute, summarize


def watch_with(rss: list[float], store: list[float]) -> MemoryWatch:
    watch = MemoryWatch(pid=0, every=60.0)
    watch.samples = [
        {"seconds": 60.0 * (n + 1), "rss_mib": r, "resume_store_mib": s}
        for n, (r, s) in enumerate(zip(rss, store, strict=True))
    ]
    return watch


def test_slope_is_in_mib_per_minute() -> None:
    assert slope_per_minute([(0.0, 100.0), (60.0, 103.0), (120.0, 106.0)]) == 3.0
    assert slope_per_minute([(0.0, 100.0)]) == 0.0


def test_rss_that_rises_with_the_resume_store_is_flat() -> None:
    store = [10.0 * n for n in range(10)]  # the load rises: the store holds 10 MiB more each minute
    figures = watch_with([150.0 + s for s in store], store).figures(600.0)
    assert figures["rss_mib_slope_per_minute_second_half"] == 10.0
    assert figures["flat"] is True
    assert figures["rss_mib_every_minute"][0] == 150.0


def test_the_conversation_store_filling_is_subtracted_too() -> None:
    watch = watch_with([150.0 + 8 * n for n in range(10)], [40.0] * 10)
    for n, sample in enumerate(watch.samples):  # the core's conversations fill 8 MiB a minute
        sample["conversation_store_mib"] = 8.0 * n
    figures = watch.figures(600.0)
    assert figures["rss_minus_stores_slope_mib_per_minute"] == 0.0
    assert figures["conversation_store_mib_slope_per_minute_second_half"] == 8.0
    assert figures["flat"] is True


def test_rss_that_rises_beside_a_steady_store_is_not_flat() -> None:
    figures = watch_with([150.0 + 3 * n for n in range(10)], [40.0] * 10).figures(600.0)
    assert figures["rss_minus_stores_slope_mib_per_minute"] == 3.0
    assert figures["flat"] is False


def test_with_memory_reports_live_bytes_judge_not_rss_that_malloc_keeps_after_the_store_shrank() -> None:
    store = [100.0 - 10 * n for n in range(10)]  # the load falls: the store lets 10 MiB go a minute
    watch = watch_with([300.0] * 10, store)  # and malloc keeps the pages: RSS stays
    for sample, held in zip(watch.samples, store, strict=True):
        sample.update(malloc_in_use_mib=60.0 + held, pymalloc_in_use_mib=40.0)
    figures = watch.figures(600.0)
    assert figures["rss_minus_stores_slope_mib_per_minute"] == 10.0
    assert figures["live_outside_store_slope_mib_per_minute"] == 0.0
    assert figures["flat"] is True
    for sample in watch.samples:
        sample["malloc_in_use_mib"] += 2 * sample["seconds"] / 60  # 2 MiB/min held outside the store
    assert watch.figures(600.0)["flat"] is False


def test_the_stores_as_a_report_read_them_replace_the_scraped_ones() -> None:
    report = {"gc_objects": 1, "objects_by_type": [], "malloc": {"in_use_bytes": 300 * MIB, "free_bytes": 0}}
    report["stores_bytes"] = {"sse_resume_bytes": 120 * MIB, "conversation_store_bytes": 30 * MIB}
    sample = {"seconds": 60.0, "rss_mib": 400.0, "resume_store_mib": 90.0, "conversation_store_mib": 10.0}
    sample.update(summarize(report))
    assert sample["resume_store_mib"] == 120.0 and sample["conversation_store_mib"] == 30.0
    assert live_outside_store(sample) == 150.0
