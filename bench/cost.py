"""Cost of the whole stack (deploy/ecs/stack.yaml), line by line, with dated list prices.

Every billed line of the stack: the service's Fargate tasks (sized here), the Kinesis stream
(provisioned shard-hours and PUT payload units, or on demand), Firehose (per GB, each record rounded
up to 5 KB), S3 (storage and requests), RDS PostgreSQL (instance and storage), the load balancer
(hours and LCUs), CloudWatch (alarms, logs, Container Insights metrics), Secrets Manager, KMS
requests, ECR storage, the Cloud Map namespace, data sent to the API's clients, the batch
pipeline's task hours per run, and the optional VPC endpoints. Printed per month for the traffic
profile below, per million events and per million API requests, and per line.

Inputs are the other benchmarks' figures in ``bench/results/*.json`` (run them first:
``python -m bench scaling api``); each can be overridden by a flag. An input whose file is
missing is taken from the figures documented in docs/operations-drills.md (measured 2026-11-26 on
the idle VM) and printed as DOCUMENTED:

- events/s of one consumer process with the real model: ``scaling.json`` ("10k items, 2 shards:
  events/s"), else ``api.json`` (the consumer's rate in ``recsys run`` while the API was loaded);
- peak memory of that process: ``scaling.json`` (the same run's "peak RSS"), else ``drill.json``
  ("consumer peak RSS" of ``recsys consume`` during the drill);
- peak memory of the API process (``recsys serve``: the sidecar container, or the child process of
  ``recsys run``): ``api.json`` ("API process peak RSS");
- API requests/s of one process: ``api.json`` ("recommendations alone").

Sizing model (stated, so it can be argued with): the consumer is ONE Python process (asyncio, the
model's NumPy forward on one thread), so a task's throughput is the measured rate x min(vCPU, 1): a
quarter vCPU does a quarter of the work and a second vCPU buys the consumer nothing. The rates
were measured on a 2-core machine that also ran PostgreSQL and moto, so they understate a
dedicated vCPU (conservative). A task needs memory >= (consumer + API process peak RSS) x ``HEADROOM``; in the
sidecar layout each container reserves its own peak x ``HEADROOM`` (rounded up to 64 MiB) and gets
a CPU share in proportion to the profile's CPU demand of events and requests. Tasks run at the
service's autoscaling target CPU (``TARGET_UTILISATION``, the stack's CpuTargetPercent default) and
the service keeps at least ``MIN_TASKS`` (two Availability Zones). The cheapest size for the
profile is the recommendation, and the stack's defaults (TaskCpu, TaskMemory, ConsumerCpu,
ConsumerMemoryReservation, ApiCpu, ApiMemoryReservation) are that size (tests/unit/bench checks).

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

# --- prices: US East (N. Virginia), on-demand list prices -----------------------------------------
# Written down on PRICES_AS_OF from the public pricing pages named beside each group (no internet
# was available to re-read them that day: re-check them before quoting a bill). Fargate: the list
# prices since the January 2019 reduction; the others as listed for us-east-1 in 2024-2026.
PRICES_AS_OF = "2026-11-26 (us-east-1 list prices; re-check the pages named in bench/cost.py before quoting)"
# https://aws.amazon.com/fargate/pricing/ (Linux/x86; 20 GB ephemeral storage included)
PRICE_VCPU_HOUR = 0.04048
PRICE_GB_HOUR = 0.004445
# https://aws.amazon.com/kinesis/data-streams/pricing/
KINESIS_SHARD_HOUR = 0.015  # provisioned
KINESIS_PUT_UNITS_PER_M = 0.014  # provisioned: per million 25 KB PUT payload units
KINESIS_ON_DEMAND_STREAM_HOUR = 0.04
KINESIS_ON_DEMAND_IN_GB = 0.08
KINESIS_ON_DEMAND_OUT_GB = 0.04
# https://aws.amazon.com/firehose/pricing/ (Direct PUT, first 500 TB a month; each record is billed
# rounded up to the next 5 KB)
FIREHOSE_GB = 0.029
FIREHOSE_RECORD_ROUNDING_BYTES = 5 * 1024
# https://aws.amazon.com/s3/pricing/ (S3 Standard, first 50 TB)
S3_GB_MONTH = 0.023
S3_PUT_PER_1000 = 0.005
S3_GET_PER_1000 = 0.0004
# https://aws.amazon.com/rds/postgresql/pricing/ (single-AZ; Multi-AZ doubles both)
RDS_INSTANCE_HOUR = {
    "db.t4g.micro": 0.016,
    "db.t4g.small": 0.032,
    "db.t4g.medium": 0.065,
    "db.m7g.large": 0.168,
}
RDS_GP3_GB_MONTH = 0.115
# https://aws.amazon.com/elasticloadbalancing/pricing/ (Application Load Balancer)
ALB_HOUR = 0.0225
ALB_LCU_HOUR = 0.008
ALB_LCU_NEW_CONNECTIONS_PER_S = 25
ALB_LCU_GB_PER_HOUR = 1.0
ALB_LCU_RULE_EVALUATIONS_PER_S = 1000
# https://aws.amazon.com/cloudwatch/pricing/
CW_ALARM_MONTH = 0.10
CW_METRIC_MONTH = 0.30  # custom metrics (Container Insights' and the log metric filter's)
CW_LOGS_INGEST_GB = 0.50
CW_LOGS_STORE_GB_MONTH = 0.03
# https://aws.amazon.com/secrets-manager/pricing/
SECRET_MONTH = 0.40
SECRET_CALLS_PER_10K = 0.05
# https://aws.amazon.com/kms/pricing/ (AWS managed keys: no monthly fee, requests only)
KMS_REQUESTS_PER_10K = 0.03
# https://aws.amazon.com/ecr/pricing/
ECR_GB_MONTH = 0.10
# https://aws.amazon.com/cloud-map/pricing/ and https://aws.amazon.com/route53/pricing/
CLOUD_MAP_INSTANCE_MONTH = 0.10
PRIVATE_ZONE_MONTH = 0.50
# https://aws.amazon.com/privatelink/pricing/ (interface endpoints, per AZ)
ENDPOINT_AZ_HOUR = 0.01
ENDPOINT_GB = 0.01
# https://aws.amazon.com/ec2/pricing/on-demand/ (data transfer out to the internet, first 10 TB)
TRANSFER_OUT_GB = 0.09
# https://aws.amazon.com/step-functions/pricing/ (standard workflows)
SFN_TRANSITIONS_PER_1000 = 0.025
HOURS_PER_MONTH = 730
DAYS_PER_MONTH = 30.4

# Fargate's valid (CPU units, memory MiB) pairs for Linux tasks (the stack's Rules check the same).
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
TARGET_UTILISATION = 0.60  # the service's autoscaling target (the stack's CpuTargetPercent)
MIN_TASKS = 2  # two Availability Zones
PROCESS_VCPU = 1.0  # one Python process uses at most one vCPU
MEMORY_STEP_MIB = 64  # a container's memory reservation is rounded up to this

# The stated traffic profile: a shop of the lab's kind, an order of magnitude busier.
PROFILE = {
    "events_per_day": 5_000_000,  # browsing events (about 58/s on average)
    "api_requests_per_day": 2_000_000,  # GET /recommendations/{customer}
    "peak_factor": 3.0,  # peak hour / average
}

# The stack as deployed with its defaults (deploy/ecs/stack.yaml), for the lines that do not scale
# with the load; each is a parameter or a count of the template's resources.
STREAM_MODE = "PROVISIONED"  # StreamMode
DATABASE_INSTANCE = "db.t4g.small"  # DatabaseInstanceClass
STACK: dict[str, float] = {
    "shards": 2,  # ShardCount
    "retention_days": 30,  # RecordRetentionDays: delivered records and dead letters
    "log_retention_days": 30,  # LogRetentionDays
    "database_gib": 20,  # DatabaseStorageGiB
    "alarms": 9,  # AWS::CloudWatch::Alarm resources
    "secrets": 2,  # the database's and the API token's (the shop's source URL secret is yours)
    "images_kept": 20,  # ImagesToKeep
    "buffer_s": 60,  # DeliveryBufferSeconds
    "buffer_mib": 5,  # DeliveryBufferMiB
    "interface_endpoints": 6,  # with CreateVpcEndpoints: ecr.api, ecr.dkr, logs, kinesis, firehose, secrets
    "zones": 2,
    "jobs_vcpu": 2.0,  # JobsCpu 2048
    "jobs_gb": 4.0,  # JobsMemory 4096
}
# Estimates, stated (not measured here): printed beside the lines they drive.
ESTIMATES: dict[str, float] = {
    "container_insights_metrics": 40,  # ECS/ContainerInsights metrics of one cluster, one service
    "log_bytes_per_task_hour": 2_000_000,  # structured JSON logs of one service task
    "api_response_bytes": 1_200,  # GET /recommendations: 10 items with scores, headers
    "pipeline_task_hours": 0.75,  # migrate + etl + train + load-vectors, one run, at the profile's shop
    "image_gb": 0.47,  # compressed image (docs/operations.md); layers are shared between tags
    "image_layer_gb_per_tag": 0.01,  # the project's own layer, different in every tag
}

# Inputs used when a result file is missing and no flag is given (printed as DOCUMENTED): the
# figures measured on 2026-11-26 on the idle VM (docs/operations-drills.md, "Cost").
DOCUMENTED = {"events_per_s": 3390.0, "memory_mb": 339.0, "api_rps": 1670.0, "api_memory_mb": 260.0}


@dataclass(frozen=True)
class Input:
    name: str
    value: float
    source: str  # the file and figure, "--flag", or "DOCUMENTED ..."


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
            out.append(Input(key, DOCUMENTED[key], "DOCUMENTED (docs/operations-drills.md, 2026-11-26)"))
            notes.append(f"no measured {key} here: the DOCUMENTED {DOCUMENTED[key]:g} is used; pass {flag}")
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
        "event_share": event_share,
        "usd_per_m_events": monthly * event_share / events_m,
        "usd_per_m_requests": monthly * (1 - event_share) / requests_m,
    }


def recommended(values: dict[str, float]) -> Option:
    """The cheapest task size for the profile (ties: the lower hourly price)."""
    table = options(values["events_per_s"], values["memory_mb"] + values["api_memory_mb"], values["api_rps"])
    if not table:
        raise SystemExit("no Fargate size holds both processes")
    return min(table, key=lambda o: (profile_bill(o)["monthly_usd"], o.price_hour))


@dataclass(frozen=True)
class Shares:
    """The sidecar layout's two containers: CPU units and memory reservations (MiB)."""

    consumer_cpu: int
    consumer_memory_mib: int
    api_cpu: int
    api_memory_mib: int


def container_shares(option: Option, values: dict[str, float]) -> Shares:
    """Each container reserves its peak RSS x HEADROOM (up to the next 64 MiB); the task's CPU is
    split in proportion to the profile's CPU demand (events / events per s, requests / requests per s)."""

    def reserve(mb: float) -> int:
        return math.ceil(mb * HEADROOM / MEMORY_STEP_MIB) * MEMORY_STEP_MIB

    events = PROFILE["events_per_day"] / values["events_per_s"]
    requests = PROFILE["api_requests_per_day"] / values["api_rps"]
    consumer_cpu = round(option.cpu_units * events / (events + requests))
    return Shares(
        consumer_cpu,
        reserve(values["memory_mb"]),
        option.cpu_units - consumer_cpu,
        reserve(values["api_memory_mb"]),
    )


def record_sizes() -> tuple[int, int]:
    """(bytes of a browsing event on Kinesis, bytes of its recommendation record through Firehose),
    built with the producer's own event generator and the consumer's record layout (10 items)."""
    import random
    from dataclasses import dataclass as _dataclass
    from datetime import UTC, datetime

    import orjson

    from consumer.producer import make_event
    from core.recommendations import Recommendation, ScoredItem, SimilarItems

    @_dataclass
    class Customer:
        customer_number: int = 103
        city: str | None = "Nantes"
        country: str | None = "France"
        credit_limit: float | None = 21000.0

    rng = random.Random(7)
    codes = [f"S{rng.randint(10, 72)}_{rng.randint(1000, 9999)}" for _ in range(110)]
    events = [make_event(rng, Customer(), codes) for _ in range(200)]
    event_bytes = sum(len(orjson.dumps(e)) for e in events) / len(events)
    items = tuple(ScoredItem(code, 0.912345) for code in codes[:10])
    answer = Recommendation(items, SimilarItems(codes[0], items), "20261126T093400Z-ab12cd34")
    record = {
        **events[0],
        **answer.to_json(),
        "event_id": "shardId-000000000001:49650237465028183918329118201028476710923871239487123:0",
        "processed_at": datetime.now(UTC).isoformat(),
    }
    return round(event_bytes), len(orjson.dumps(record)) + 1  # + the newline


def firehose_packing(record_bytes: int) -> tuple[float, float]:
    """(events per Firehose record, billed bytes per event) at the profile's average rate.

    The consumer packs the output records of one batch (one GetRecords page of a shard) into
    Firehose records of up to ``firehose_pack_bytes``; at the profile's rate a shard's page holds
    ``events/s / shards x poll interval`` events, and Firehose rounds each record up to 5 KB. Peak
    hours pack more events to a record, so the average is the conservative figure."""
    from consumer.config import ConsumerSettings

    tuning = ConsumerSettings()
    per_page = PROFILE["events_per_day"] / 86_400 / STACK["shards"] * tuning.poll_interval_s
    fit = tuning.firehose_pack_bytes // record_bytes
    per_record = max(1.0, min(per_page, float(fit)))
    billed = (
        math.ceil(per_record * record_bytes / FIREHOSE_RECORD_ROUNDING_BYTES) * FIREHOSE_RECORD_ROUNDING_BYTES
    )
    return per_record, billed / per_record


@dataclass(frozen=True)
class Line:
    service: str
    what: str
    monthly_usd: float
    path: str  # "events", "requests" or "fixed": what it grows with


def stack_lines(option: Option, bill: dict[str, float], sizes: tuple[int, int]) -> list[Line]:
    """Every billed line of the stack for the profile on ``option``, per month."""
    event_bytes, record_bytes = sizes
    events_month = PROFILE["events_per_day"] * DAYS_PER_MONTH
    requests_month = PROFILE["api_requests_per_day"] * DAYS_PER_MONTH
    gb = 1024**3
    fargate = bill["monthly_usd"]
    event_share = bill["event_share"]
    lines = [
        Line(
            "Fargate",
            f"service tasks {option.cpu_units / 1024:g} vCPU/{option.memory_mib} MiB, "
            f"{bill['peak_tasks']:.0f} at peak, {bill['average_tasks']:.0f} otherwise (events' CPU share)",
            fargate * event_share,
            "events",
        ),
        Line("Fargate", "the same tasks (requests' CPU share)", fargate * (1 - event_share), "requests"),
    ]
    if STREAM_MODE == "PROVISIONED":
        lines += [
            Line(
                "Kinesis",
                f"{STACK['shards']} shards x {HOURS_PER_MONTH} h",
                STACK["shards"] * HOURS_PER_MONTH * KINESIS_SHARD_HOUR,
                "events",
            ),
            Line(
                "Kinesis",
                f"PUT payload units (one per event of {event_bytes} B, not KPL-aggregated)",
                events_month * math.ceil(event_bytes / 25_600) / 1e6 * KINESIS_PUT_UNITS_PER_M,
                "events",
            ),
        ]
    else:
        lines += [
            Line(
                "Kinesis", "on-demand stream-hours", HOURS_PER_MONTH * KINESIS_ON_DEMAND_STREAM_HOUR, "events"
            ),
            Line(
                "Kinesis",
                "on-demand GB in and out",
                events_month * event_bytes / gb * (KINESIS_ON_DEMAND_IN_GB + KINESIS_ON_DEMAND_OUT_GB),
                "events",
            ),
        ]
    per_record, billed_per_event = firehose_packing(record_bytes)
    delivered_gb_day = PROFILE["events_per_day"] * record_bytes / gb
    objects_day = max(86_400 / STACK["buffer_s"], delivered_gb_day * 1024 / STACK["buffer_mib"])
    lines += [
        Line(
            "Firehose",
            f"{record_bytes} B records, {per_record:.1f} to a Firehose record (one GetRecords page of a "
            f"shard), billed {billed_per_event / 1024:.2f} KB per event",
            events_month * billed_per_event / gb * FIREHOSE_GB,
            "events",
        ),
        Line(
            "S3",
            f"delivered records kept {STACK['retention_days']} days "
            f"({delivered_gb_day * STACK['retention_days']:.0f} GB)",
            delivered_gb_day * STACK["retention_days"] * S3_GB_MONTH,
            "events",
        ),
        Line(
            "S3",
            f"Firehose PUTs ({objects_day:.0f} objects a day)",
            objects_day * DAYS_PER_MONTH / 1000 * S3_PUT_PER_1000,
            "events",
        ),
        Line(
            "KMS",
            "requests (stream data keys, S3 bucket keys)",
            (STACK["shards"] * 12 * HOURS_PER_MONTH + objects_day * DAYS_PER_MONTH)
            / 10_000
            * KMS_REQUESTS_PER_10K,
            "events",
        ),
    ]
    response_gb = requests_month * ESTIMATES["api_response_bytes"] / gb
    peak_rps = PROFILE["api_requests_per_day"] / 86_400 * PROFILE["peak_factor"]
    lcus = max(
        peak_rps / ALB_LCU_NEW_CONNECTIONS_PER_S * 0.1,  # keep-alive: ~1 new connection per 10 requests
        response_gb / (DAYS_PER_MONTH * 24) / ALB_LCU_GB_PER_HOUR,
        peak_rps / ALB_LCU_RULE_EVALUATIONS_PER_S,
    )
    lines += [
        Line("Load balancer", "ALB hours", HOURS_PER_MONTH * ALB_HOUR, "requests"),
        Line(
            "Load balancer",
            f"LCU-hours ({lcus:.2f} LCU at peak, counted all month)",
            lcus * HOURS_PER_MONTH * ALB_LCU_HOUR,
            "requests",
        ),
        Line(
            "Data transfer",
            f"API answers to clients ({ESTIMATES['api_response_bytes']} B each, estimated)",
            response_gb * TRANSFER_OUT_GB,
            "requests",
        ),
    ]
    task_hours = (6 * bill["peak_tasks"] + 18 * bill["average_tasks"]) / 24 * HOURS_PER_MONTH
    log_gb = task_hours * ESTIMATES["log_bytes_per_task_hour"] / gb
    rds_hour = RDS_INSTANCE_HOUR[DATABASE_INSTANCE]
    image_gb = ESTIMATES["image_gb"] + STACK["images_kept"] * ESTIMATES["image_layer_gb_per_tag"]
    lines += [
        Line("RDS", f"{DATABASE_INSTANCE} PostgreSQL, single-AZ", rds_hour * HOURS_PER_MONTH, "fixed"),
        Line("RDS", f"{STACK['database_gib']} GB gp3", STACK["database_gib"] * RDS_GP3_GB_MONTH, "fixed"),
        Line("CloudWatch", f"{STACK['alarms']} alarms", STACK["alarms"] * CW_ALARM_MONTH, "fixed"),
        Line(
            "CloudWatch",
            f"Container Insights (~{ESTIMATES['container_insights_metrics']} metrics, estimated) "
            "and the metric filter's metric",
            (ESTIMATES["container_insights_metrics"] + 1) * CW_METRIC_MONTH,
            "fixed",
        ),
        Line(
            "CloudWatch",
            f"logs ({log_gb:.1f} GB a month, estimated; kept {STACK['log_retention_days']} days)",
            log_gb * (CW_LOGS_INGEST_GB + CW_LOGS_STORE_GB_MONTH * STACK["log_retention_days"] / 30),
            "fixed",
        ),
        Line(
            "Secrets Manager",
            f"{STACK['secrets']} secrets (+ reads at task starts)",
            STACK["secrets"] * SECRET_MONTH + 1000 / 10_000 * SECRET_CALLS_PER_10K,
            "fixed",
        ),
        Line(
            "ECR",
            f"images ({image_gb:.2f} GB: shared layers, {STACK['images_kept']} tags)",
            image_gb * ECR_GB_MONTH,
            "fixed",
        ),
        Line(
            "Cloud Map",
            "private DNS namespace and the tasks' records",
            PRIVATE_ZONE_MONTH + bill["average_tasks"] * CLOUD_MAP_INSTANCE_MONTH,
            "fixed",
        ),
    ]
    return lines


def pipeline_run_usd() -> float:
    """One run of the batch pipeline: the jobs' task hours and a dozen state transitions."""
    hours = ESTIMATES["pipeline_task_hours"]
    task = STACK["jobs_vcpu"] * PRICE_VCPU_HOUR + STACK["jobs_gb"] * PRICE_GB_HOUR
    return hours * task + 12 / 1000 * SFN_TRANSITIONS_PER_1000


def endpoints_monthly_usd(gb_a_month: float) -> float:
    """CreateVpcEndpoints=true: the interface endpoints in every zone, and the data through them."""
    hours = STACK["interface_endpoints"] * STACK["zones"] * HOURS_PER_MONTH
    return hours * ENDPOINT_AZ_HOUR + gb_a_month * ENDPOINT_GB


def main(quick: bool = False, flags: dict[str, float | None] | None = None) -> None:
    inputs, notes = resolve_inputs(flags or {})
    values = {i.name: i.value for i in inputs}
    print(f"  prices: us-east-1 on-demand list prices, as of {PRICES_AS_OF}")
    print(f"          Fargate ${PRICE_VCPU_HOUR}/vCPU-h, ${PRICE_GB_HOUR}/GB-h (the others: bench/cost.py)")
    for i in inputs:
        print(f"  input {i.name:<13} {i.value:>10.1f}   from {i.source}")
    for note in notes:
        print(f"  {note}")
    memory = values["memory_mb"] + values["api_memory_mb"]  # consumer + API process (or container)
    table = options(values["events_per_s"], memory, values["api_rps"])
    if not table:
        raise SystemExit(f"no Fargate size has {memory * HEADROOM:.0f} MiB of memory")
    print(
        f"\n  Fargate, per task size (memory >= (consumer + API) peak RSS x {HEADROOM}; throughput x "
        f"min(vCPU, 1) at {TARGET_UTILISATION:.0%} CPU); the profile's tasks on that size:"
    )
    print(
        f"  {'vCPU':>5} {'MiB':>6} {'$/hour':>8} {'events/s':>9} {'req/s':>6} {'$/M ev':>7} {'$/M req':>7}"
        f" | {'tasks':>5} {'$/month':>8}"
    )
    bills = {o: profile_bill(o) for o in table}
    for o, b in bills.items():
        print(
            f"  {o.cpu_units / 1024:>5g} {o.memory_mib:>6} {o.price_hour:>8.5f} {o.events_per_s:>9.0f} "
            f"{o.api_rps:>6.0f} {o.usd_per_m_events:>7.4f} {o.usd_per_m_requests:>7.4f}"
            f" | {b['peak_tasks']:>2.0f}/{b['average_tasks']:<2.0f} {b['monthly_usd']:>8.2f}"
        )
    best = recommended(values)
    shares = container_shares(best, values)
    print(
        f"\n  recommended task: {best.cpu_units / 1024:g} vCPU / {best.memory_mib} MiB "
        f"(TaskCpu {best.cpu_units}, TaskMemory {best.memory_mib}); "
        f"sidecar shares: consumer {shares.consumer_cpu} CPU units / "
        f"{shares.consumer_memory_mib} MiB, API {shares.api_cpu} / {shares.api_memory_mib} MiB"
    )
    sizes = record_sizes()
    lines = stack_lines(best, bills[best], sizes)
    events_m = PROFILE["events_per_day"] * DAYS_PER_MONTH / 1e6
    requests_m = PROFILE["api_requests_per_day"] * DAYS_PER_MONTH / 1e6
    total = sum(line.monthly_usd for line in lines)
    print(
        f"\n  the stack, month by line: {PROFILE['events_per_day']:,} events/day ({sizes[0]} B each, records "
        f"{sizes[1]} B) + {PROFILE['api_requests_per_day']:,} API requests/day, "
        f"peak x{PROFILE['peak_factor']:g} 6 h/day"
    )
    for line in lines:
        print(f"  {line.service:<16} {line.monthly_usd:>9.2f}  {line.path:<8} {line.what}")
    by_path = {
        p: sum(line.monthly_usd for line in lines if line.path == p) for p in ("events", "requests", "fixed")
    }
    share = bills[best]["event_share"]
    per_event = (by_path["events"] + by_path["fixed"] * share) / events_m
    per_request = (by_path["requests"] + by_path["fixed"] * (1 - share)) / requests_m
    print(f"  {'total':<16} {total:>9.2f}  a month")
    print(
        f"  per million events:       ${by_path['events'] / events_m:.4f} for what grows with events, "
        f"${per_event:.4f} with the fixed lines split by CPU share"
    )
    print(
        f"  per million API requests: ${by_path['requests'] / requests_m:.4f} for what grows with requests, "
        f"${per_request:.4f} with the fixed lines split by CPU share"
    )
    run = pipeline_run_usd()
    print(
        f"  batch pipeline: ${run:.2f} a run (~{ESTIMATES['pipeline_task_hours']:g} task-hours of "
        f"{STACK['jobs_vcpu']:g} vCPU / {STACK['jobs_gb']:g} GB, estimated); "
        f"nightly: ${run * DAYS_PER_MONTH:.2f} a month"
    )
    print(
        f"  optional VPC endpoints (CreateVpcEndpoints): ${endpoints_monthly_usd(0):.2f} a month "
        "before data; a NAT gateway instead (outside the stack) is billed per hour and per GB too"
    )
    report = Report(
        "cost",
        scale={
            "prices_as_of": PRICES_AS_OF,
            "inputs": {i.name: {"value": i.value, "source": i.source} for i in inputs},
            "profile": PROFILE,
            "stack": {**STACK, "stream_mode": STREAM_MODE, "database_instance": DATABASE_INSTANCE},
            "estimates": ESTIMATES,
            "recommended": {"cpu": best.cpu_units, "memory_mib": best.memory_mib, "shares": shares.__dict__},
            "record_bytes": {"event": sizes[0], "recommendation": sizes[1]},
        },
    )
    report.add(Figure("profile: whole stack, $ a month", "usd", [total]))
    report.add(Figure("profile: $ per million events (all-in)", "usd", [per_event]))
    report.add(Figure("profile: $ per million API requests (all-in)", "usd", [per_request]))
    report.add(Figure("profile: Fargate, $ a month", "usd", [bills[best]["monthly_usd"]]))
    fargate = report.figures[-1]
    report.ratio("whole stack / Fargate alone", report.figures[0], fargate, note="what the other lines add")
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
