"""The cost model's sizing: memory holds both of `recsys run`'s processes; throughput caps at 1 vCPU."""

from __future__ import annotations

from bench.cost import HEADROOM, options


def test_the_api_process_memory_decides_the_smallest_task() -> None:
    consumer_only = options(events_per_s=1000.0, memory_mb=339.0, api_rps=1000.0)
    both = options(events_per_s=1000.0, memory_mb=339.0 + 260.0, api_rps=1000.0)
    quarter = {o.cpu_units: o for o in consumer_only}[256]
    assert quarter.memory_mib == 512  # 339 x 1.3 = 441 MiB fits half a GiB
    quarter = {o.cpu_units: o for o in both}[256]
    assert quarter.memory_mib == 1024  # (339 + 260) x 1.3 = 779 MiB does not
    assert all(o.memory_mib >= (339.0 + 260.0) * HEADROOM for o in both)


def test_a_second_vcpu_buys_the_consumer_nothing() -> None:
    by_cpu = {o.cpu_units: o for o in options(events_per_s=1000.0, memory_mb=400.0, api_rps=500.0)}
    assert by_cpu[1024].events_per_s == by_cpu[2048].events_per_s == 2 * by_cpu[512].events_per_s
    assert by_cpu[2048].usd_per_m_events > by_cpu[1024].usd_per_m_events
