"""``build_memory_kb``: the HNSW build's maintenance_work_mem grows with the catalog, within bounds."""

from __future__ import annotations

from model_store.loader import BUILD_MEMORY_MAX_KB, BUILD_MEMORY_MIN_KB, build_memory_kb


def test_build_memory_grows_with_the_catalog_and_the_dimension() -> None:
    sizes = [build_memory_kb(n, 32) for n in (100_000, 300_000, 1_000_000)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert 100 * 1024 < sizes[0] < 200 * 1024  # about 138 MB for 100k 32-d items
    assert build_memory_kb(300_000, 128) > build_memory_kb(300_000, 32)


def test_build_memory_is_bounded() -> None:
    assert build_memory_kb(0, 32) == BUILD_MEMORY_MIN_KB  # never below PostgreSQL's default
    assert build_memory_kb(6_000, 32) == BUILD_MEMORY_MIN_KB
    assert build_memory_kb(100_000_000, 32) == BUILD_MEMORY_MAX_KB
