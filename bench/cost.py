"""Cost, measured: dollars per million events and per million API requests on Fargate, by task size.

Inputs are the other benchmarks' figures in ``bench/results/*.json`` (run them first:
``python -m bench scaling api``); each can be overridden by a flag, and an input whose file is
missing is printed as MISSING with the assumed value used instead (pass the flag to set it):

- events/s of one consumer process with the real model: ``scaling.json`` ("10k items, 2 shards:
  events/s"), else ``api.json`` (the consumer's rate in ``recsys run`` while the API was loaded);
- peak memory of that process: ``scaling.json`` (the same run's "peak RSS"), else ``drill.json``
  ("consumer peak RSS" of ``recsys consume`` during the drill);
- peak memory of the API process ``recsys run`` starts beside it (``--api-loop process``, the
  default): ``api.json`` ("API process peak RSS"), else 254 MB (its idle RSS, measured by hand for
  docs/api.md) marked ASSUMED;
- API requests/s of one process: ``api.json`` ("recommendations alone").

Model (stated, so it can be argued with): the consumer is ONE Python process (asyncio, torch on
one thread), so a task's throughput is the measured rate x min(vCPU, 1): a quarter vCPU does a
quarter of the work and a second vCPU buys the consumer nothing (the API's child process could use
it; counted as nothing here, which is conservative). The
rates were measured on a 2-core machine that also ran PostgreSQL and moto, so they understate a
dedicated vCPU (conservative). A task needs memory >= (consumer + API process peak RSS) x
``HEADROOM``. Tasks run at the service's autoscaling target CPU (``TARGET_UTILISATION``,
deploy/ecs/variables.json's CPU_TARGET_PERCENT default), and the service keeps at least
``MIN_TASKS`` (two Availability Zones).

Cost per million events = task price per hour / (events/s x utilisation x 3600) x 1e6; the same for
API requests. The traffic profile below then gives the monthly bill and the effective unit costs.

Run: ``python -m bench cost`` or
``python -m bench.cost [--events-per-s X] [--memory-mb M] [--api-rps R] [--api-memory-mb M]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

from bench._harness import RESULTS, Figure, Report

# --- prices: AWS Fargate, US East (N. Virginia), Linux/x86, on-demand ------------------------------
# Source: https://aws.amazon.com/fargate/pricing/ ("Per vCPU per hour", "Per GB per hour").
# These are the list prices as published since the January 2019 Fargate price reduction and still
# listed when this module was written (2026-11-26); no internet was available to re-read the page on
# that date, so re-check it before quoting a bill. 20 GB of ephemeral storage is included (not used
# beyond that here). Linux/ARM (Graviton) is about 20 % cheaper; the image is built for x86 CPU torch.
PRICES_AS_OF = "2026-11-26 (list prices unchanged since 2019-01; source page named above)"
PRICE_VCPU_HOUR = 0.04048
PRICE_GB_HOUR = 0.004445
HOURS_PER_MONTH = 730

# Fargate's valid (CPU units, memory MiB) pairs for Linux tasks (as deploy/ecs/render.py checks).
FARGATE_PAIRS: dict[int, list[int]] = {
    256: [512, 1024, 2048],
    512: list(range(1024, 4096 + 1, 1024)),
    1024: list(range(2048, 8192 + 1, 1024)),
    2048: list(range(4096, 16384 + 1, 1024)),
    4096: list(range(8192, 30720 + 1, 1024)),
    8192: list(range(16384, 61440 + 1, 4096)),
    16384: list(range(32768, 122880 + 1, 8192)),
}

HEADROOM = 1.3  # memory: peak RSS x this
TARGET_UTILISATION = 0.60  # the service's autoscaling target (CPU_TARGET_PERCENT)
MIN_TASKS = 2  # two Availability Zones
PROCESS_VCPU = 1.0  # one Python process uses at most one vCPU

# The stated traffic profile: a shop of the lab's kind, an order of magnitude busier.
PROFILE = {
    "events_per_day": 5_000_000,  # browsing events (about 58/s on average)
    "api_requests_per_day": 2_000_000,  # GET /recommendations/{customer}
    "peak_factor": 3.0,  # peak hour / average
}

# Assumed only when a result file is missing and no flag is given (printed as ASSUMED).
ASSUMED = {"events_per_s": 500.0, "memory_mb": 900.0, "api_rps": 250.0, "api_memory_mb": 254.0}


@dataclass(frozen=True)
class Input:
    name: str
    value: float
    source: str  # the file and figure, "--flag", or "ASSUMED ..."


def _figures(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _median(data: dict[str, Any], figure: str) -> float | None:
    for f in data.get("figures", []):
        if f["name"] == figure:
            return float(f["median"])
    return None


def resolve_inputs(flags: dict[str, float | None]) -> tuple[list[Input], list[str]]:
    """The three inputs and the messages about where each came from (MISSING lines included)."""
    notes: list[str] = []
    scaling, api = _figures("scaling"), _figures("api")
    found: dict[str, Input] = {}

    def when(data: dict[str, Any]) -> str:
        return str(data.get("machine", {}).get("when", "?"))

    if scaling is not None:
        rate = _median(scaling, "10k items, 2 shards: events/s")
        if rate is not None:
            found["events_per_s"] = Input(
                "events_per_s", rate, f"scaling.json '10k items, 2 shards: events/s' ({when(scaling)})"
            )
        peak = _median(scaling, "10k items, 2 shards: peak RSS")
        if peak is not None:
            found["memory_mb"] = Input(
                "memory_mb", peak, f"scaling.json '10k items, 2 shards: peak RSS' ({when(scaling)})"
            )
    else:
        notes.append("MISSING bench/results/scaling.json (run `python -m bench scaling`)")
    if api is not None:
        rps = _median(api, "recommendations alone")
        if rps is not None:
            found["api_rps"] = Input("api_rps", rps, f"api.json 'recommendations alone' ({when(api)})")
        api_peak = _median(api, "API process peak RSS")
        if api_peak is not None:
            found["api_memory_mb"] = Input(
                "api_memory_mb", api_peak, f"api.json 'API process peak RSS' ({when(api)})"
            )
        rates = [
            f
            for f in api.get("figures", [])
            if str(f["name"]).startswith(("consumer events/s", "consumer during"))
        ]
        if "events_per_s" not in found and rates:
            found["events_per_s"] = Input(
                "events_per_s",
                float(rates[0]["median"]),
                f"api.json '{rates[0]['name']}' ({when(api)}; real model, API loaded in-process)",
            )
    else:
        notes.append("MISSING bench/results/api.json (run `python -m bench api`)")
    drill = _figures("drill")
    if "memory_mb" not in found and drill is not None:
        rss = _median(drill, "consumer peak RSS")
        if rss is not None:
            found["memory_mb"] = Input(
                "memory_mb", rss, f"drill.json 'consumer peak RSS' ({when(drill)}; `recsys consume`)"
            )
    out: list[Input] = []
    for key, flag in (
        ("events_per_s", "--events-per-s"),
        ("memory_mb", "--memory-mb"),
        ("api_rps", "--api-rps"),
        ("api_memory_mb", "--api-memory-mb"),
    ):
        given = flags.get(key)
        if given is not None:
            out.append(Input(key, float(given), f"{flag} (given)"))
        elif key in found:
            out.append(found[key])
        else:
            out.append(Input(key, ASSUMED[key], f"ASSUMED (no benchmark figure; set {flag})"))
            notes.append(f"MISSING a measured {key}: using the ASSUMED {ASSUMED[key]:g}; pass {flag}")
    return out, notes


@dataclass(frozen=True)
class Option:
    cpu_units: int
    memory_mib: int
    price_hour: float
    events_per_s: float  # at the utilisation target
    api_rps: float
    usd_per_m_events: float
    usd_per_m_requests: float


def options(events_per_s: float, memory_mb: float, api_rps: float) -> list[Option]:
    """Every valid Fargate size with enough memory: its unit costs (smallest memory per CPU)."""
    need_mib = memory_mb * HEADROOM
    out: list[Option] = []
    for cpu, memories in FARGATE_PAIRS.items():
        fitting = [m for m in memories if m >= need_mib]
        if not fitting:
            continue
        memory = fitting[0]  # more memory than needed only costs
        vcpu = cpu / 1024
        price = vcpu * PRICE_VCPU_HOUR + memory / 1024 * PRICE_GB_HOUR
        share = min(vcpu, PROCESS_VCPU) * TARGET_UTILISATION
        ev, rps = events_per_s * share, api_rps * share
        out.append(Option(cpu, memory, price, ev, rps, price / (ev * 3600) * 1e6, price / (rps * 3600) * 1e6))
    return out


def profile_bill(option: Option) -> dict[str, float]:
    """Tasks and monthly cost of the profile on ``option`` (events and requests share the CPU)."""
    peak_events = PROFILE["events_per_day"] / 86_400 * PROFILE["peak_factor"]
    peak_rps = PROFILE["api_requests_per_day"] / 86_400 * PROFILE["peak_factor"]
    load = peak_events / option.events_per_s + peak_rps / option.api_rps  # tasks' worth at peak
    peak_tasks = max(MIN_TASKS, math.ceil(load))
    avg_tasks = max(MIN_TASKS, math.ceil(load / PROFILE["peak_factor"]))
    # a simple day: 6 peak hours, 18 average hours (autoscaling follows the load)
    task_hours_month = (6 * peak_tasks + 18 * avg_tasks) / 24 * HOURS_PER_MONTH
    monthly = task_hours_month * option.price_hour
    events_m = PROFILE["events_per_day"] * 30.4 / 1e6
    requests_m = PROFILE["api_requests_per_day"] * 30.4 / 1e6
    event_share = (PROFILE["events_per_day"] / option.events_per_s) / (
        PROFILE["events_per_day"] / option.events_per_s + PROFILE["api_requests_per_day"] / option.api_rps
    )
    return {
        "peak_tasks": peak_tasks,
        "average_tasks": avg_tasks,
        "monthly_usd": monthly,
        "usd_per_m_events": monthly * event_share / events_m,
        "usd_per_m_requests": monthly * (1 - event_share) / requests_m,
    }


def main(quick: bool = False, flags: dict[str, float | None] | None = None) -> None:
    inputs, notes = resolve_inputs(flags or {})
    values = {i.name: i.value for i in inputs}
    print(
        f"  prices: Fargate us-east-1 Linux/x86 on-demand, ${PRICE_VCPU_HOUR}/vCPU-h, ${PRICE_GB_HOUR}/GB-h"
    )
    print(f"          as of {PRICES_AS_OF}")
    for i in inputs:
        print(f"  input {i.name:<13} {i.value:>10.1f}   from {i.source}")
    for note in notes:
        print(f"  {note}")
    memory = values["memory_mb"] + values["api_memory_mb"]  # `recsys run`: consumer + API process
    table = options(values["events_per_s"], memory, values["api_rps"])
    if not table:
        raise SystemExit(f"no Fargate size has {memory * HEADROOM:.0f} MiB of memory")
    print(
        f"\n  per task size (memory >= (consumer + API process) peak RSS x {HEADROOM}; throughput x "
        f"min(vCPU, 1) at {TARGET_UTILISATION:.0%} CPU); the profile's bill on that size:"
    )
    print(
        f"  {'vCPU':>5} {'MiB':>6} {'$/hour':>8} {'events/s':>9} {'req/s':>6} {'$/M ev':>7} {'$/M req':>7}"
        f" | {'tasks':>5} {'$/month':>8} {'$/M ev':>7} {'$/M req':>7}"
    )
    bills = {o: profile_bill(o) for o in table}
    for o, b in bills.items():
        print(
            f"  {o.cpu_units / 1024:>5g} {o.memory_mib:>6} {o.price_hour:>8.5f} {o.events_per_s:>9.0f} "
            f"{o.api_rps:>6.0f} {o.usd_per_m_events:>7.4f} {o.usd_per_m_requests:>7.4f}"
            f" | {b['peak_tasks']:>2.0f}/{b['average_tasks']:<2.0f} {b['monthly_usd']:>8.2f} "
            f"{b['usd_per_m_events']:>7.4f} {b['usd_per_m_requests']:>7.4f}"
        )
    best = min(table, key=lambda o: (bills[o]["monthly_usd"], o.price_hour))
    default = next((o for o in table if o.cpu_units == 1024), table[0])
    bill, default_bill = bills[best], bills[default]
    print(
        f"\n  profile: {PROFILE['events_per_day']:,} events/day + {PROFILE['api_requests_per_day']:,} API "
        f"requests/day, peak x{PROFILE['peak_factor']:g} (6 h/day), at least {MIN_TASKS} tasks"
    )
    for label, o, b in (("cheapest", best, bill), ("deployed default", default, default_bill)):
        print(
            f"    {label:<17} {o.cpu_units / 1024:g} vCPU/{o.memory_mib} MiB: "
            f"{b['peak_tasks']:.0f} tasks at peak, {b['average_tasks']:.0f} otherwise, "
            f"${b['monthly_usd']:.2f}/month"
        )
        print(
            f"    {'':<17} = ${b['usd_per_m_events']:.4f} per million events "
            f"+ ${b['usd_per_m_requests']:.4f} per million API requests"
        )
    report = Report(
        "cost",
        scale={
            "prices_as_of": PRICES_AS_OF,
            "price_vcpu_hour": PRICE_VCPU_HOUR,
            "price_gb_hour": PRICE_GB_HOUR,
            "inputs": {i.name: {"value": i.value, "source": i.source} for i in inputs},
            "profile": PROFILE,
            "cheapest": {"cpu": best.cpu_units, "memory_mib": best.memory_mib},
        },
    )
    report.add(Figure("profile: $ per million events", "usd", [bill["usd_per_m_events"]]))
    report.add(Figure("profile: $ per million API requests", "usd", [bill["usd_per_m_requests"]]))
    report.add(Figure("at full load: $ per million events", "usd", [best.usd_per_m_events]))
    report.add(Figure("at full load: $ per million API requests", "usd", [best.usd_per_m_requests]))
    report.add(Figure("profile: monthly cost, cheapest size", "usd", [bill["monthly_usd"]]))
    report.add(Figure("profile: monthly cost, 1 vCPU/2 GiB default", "usd", [default_bill["monthly_usd"]]))
    report.ratio(
        "cheapest / default monthly",
        report.figures[-2],
        report.figures[-1],
        note="what choosing the size saves",
    )
    report.print()
    print(f"  wrote {report.write()}")


def _cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__.split("\n")[0])
    parser.add_argument("--events-per-s", type=float, help="events/s of one consumer process (overrides)")
    parser.add_argument("--memory-mb", type=float, help="peak RSS of the consumer process in MB (overrides)")
    parser.add_argument("--api-rps", type=float, help="API requests/s of one process (overrides)")
    parser.add_argument("--api-memory-mb", type=float, help="peak RSS of the API process in MB (overrides)")
    args = parser.parse_args(argv)
    main(
        flags={
            "events_per_s": args.events_per_s,
            "memory_mb": args.memory_mb,
            "api_rps": args.api_rps,
            "api_memory_mb": args.api_memory_mb,
        }
    )


if __name__ == "__main__":
    _cli(sys.argv[1:])
