"""The cost model: memory holds both processes (or containers), throughput caps at 1 vCPU, the stack's
default task is the recommended size, and every resource of the stack is priced or free."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode

from bench import cost
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


# --- the whole stack ------------------------------------------------------------------------------

STACK_FILE = Path(__file__).resolve().parents[3] / "deploy" / "ecs" / "stack.yaml"
# resource types of the stack and the cost line that bills them; FREE ones cost nothing themselves
BILLED = {
    "AWS::ECS::TaskDefinition": "Fargate",
    "AWS::ECS::Service": "Fargate",
    "AWS::Kinesis::Stream": "Kinesis",
    "AWS::KinesisFirehose::DeliveryStream": "Firehose",
    "AWS::S3::Bucket": "S3",
    "AWS::RDS::DBInstance": "RDS",
    "AWS::ElasticLoadBalancingV2::LoadBalancer": "Load balancer",
    "AWS::CloudWatch::Alarm": "CloudWatch",
    "AWS::Logs::LogGroup": "CloudWatch",
    "AWS::Logs::MetricFilter": "CloudWatch",
    "AWS::ECS::Cluster": "CloudWatch",  # Container Insights
    "AWS::SecretsManager::Secret": "Secrets Manager",
    "AWS::ECR::Repository": "ECR",
    "AWS::ServiceDiscovery::PrivateDnsNamespace": "Cloud Map",
    "AWS::ServiceDiscovery::Service": "Cloud Map",
}
PRICED_APART = {  # billed, printed on their own line: per run, or optional
    "AWS::StepFunctions::StateMachine": "pipeline_run_usd",
    "AWS::EC2::VPCEndpoint": "endpoints_monthly_usd",
}
FREE = {
    "AWS::EC2::SecurityGroup", "AWS::EC2::SecurityGroupIngress", "AWS::EC2::SecurityGroupEgress",
    "AWS::IAM::Role", "AWS::S3::BucketPolicy", "AWS::Logs::LogStream", "AWS::RDS::DBSubnetGroup",
    "AWS::ElasticLoadBalancingV2::TargetGroup", "AWS::ElasticLoadBalancingV2::Listener",
    "AWS::ApplicationAutoScaling::ScalableTarget", "AWS::ApplicationAutoScaling::ScalingPolicy",
    "AWS::Events::Rule", "AWS::SNS::Topic",  # a few alarm notifications: within SNS's free tier
}  # fmt: skip


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded, matches = decode(str(STACK_FILE))
    assert not matches and loaded is not None
    return dict(loaded)


def default(template: dict[str, Any], name: str) -> str:
    return str(template["Parameters"][name]["Default"])


def test_the_stacks_default_task_is_the_recommended_size(template: dict[str, Any]) -> None:
    best = cost.recommended(cost.DOCUMENTED)
    shares = cost.container_shares(best, cost.DOCUMENTED)
    assert (default(template, "TaskCpu"), default(template, "TaskMemory")) == (
        str(best.cpu_units),
        str(best.memory_mib),
    )
    assert (default(template, "ConsumerCpu"), default(template, "ConsumerMemoryReservation")) == (
        str(shares.consumer_cpu),
        str(shares.consumer_memory_mib),
    )
    assert (default(template, "ApiCpu"), default(template, "ApiMemoryReservation")) == (
        str(shares.api_cpu),
        str(shares.api_memory_mib),
    )
    assert shares.consumer_cpu + shares.api_cpu == best.cpu_units
    assert shares.consumer_memory_mib + shares.api_memory_mib <= best.memory_mib
    assert str(round(cost.TARGET_UTILISATION * 100)) == default(template, "CpuTargetPercent")
    assert str(cost.MIN_TASKS) == default(template, "MinTasks")


def test_the_cost_model_prices_the_stack_as_its_defaults_make_it(template: dict[str, Any]) -> None:
    resources = template["Resources"].values()
    count = lambda kind: sum(1 for r in resources if r["Type"] == kind)  # noqa: E731
    assert cost.STACK["alarms"] == count("AWS::CloudWatch::Alarm")
    assert cost.STACK["secrets"] == count("AWS::SecretsManager::Secret")
    assert cost.STACK["interface_endpoints"] == sum(
        1
        for r in resources
        if r["Type"] == "AWS::EC2::VPCEndpoint" and r["Properties"]["VpcEndpointType"] == "Interface"
    )
    for key, parameter in {
        "shards": "ShardCount",
        "retention_days": "RecordRetentionDays",
        "log_retention_days": "LogRetentionDays",
        "database_gib": "DatabaseStorageGiB",
        "images_kept": "ImagesToKeep",
        "buffer_s": "DeliveryBufferSeconds",
        "buffer_mib": "DeliveryBufferMiB",
    }.items():
        assert str(cost.STACK[key]) == default(template, parameter), key
    assert default(template, "StreamMode") == cost.STREAM_MODE
    assert default(template, "DatabaseInstanceClass") == cost.DATABASE_INSTANCE
    assert cost.STACK["jobs_vcpu"] * 1024 == int(default(template, "JobsCpu"))
    assert cost.STACK["jobs_gb"] * 1024 == int(default(template, "JobsMemory"))


def test_every_resource_type_of_the_stack_is_priced_or_free(template: dict[str, Any]) -> None:
    types = {r["Type"] for r in template["Resources"].values()}
    unpriced = types - set(BILLED) - set(PRICED_APART) - FREE
    assert unpriced == set(), "a new resource type: give it a cost line in bench/cost.py"
    best = cost.recommended(cost.DOCUMENTED)
    lines = cost.stack_lines(best, cost.profile_bill(best), cost.record_sizes())
    services = {line.service for line in lines}
    assert {BILLED[t] for t in types & set(BILLED)} <= services
    assert all(line.monthly_usd > 0 for line in lines)
    assert cost.pipeline_run_usd() > 0 and cost.endpoints_monthly_usd(0) > 0


def test_firehose_bills_packed_records_rounded_up_to_5_kb() -> None:
    event_bytes, record_bytes = cost.record_sizes()
    assert 100 < event_bytes < record_bytes < cost.FIREHOSE_RECORD_ROUNDING_BYTES
    best = cost.recommended(cost.DOCUMENTED)
    lines = cost.stack_lines(best, cost.profile_bill(best), (event_bytes, record_bytes))
    (firehose,) = [line for line in lines if line.service == "Firehose"]
    events_month = cost.PROFILE["events_per_day"] * cost.DAYS_PER_MONTH
    per_record, billed_per_event = cost.firehose_packing(record_bytes)
    # a shard's page at the profile's ~58 events/s over 2 shards, every 0.2 s: ~5.8 events a record
    assert 5 < per_record < 7
    billed = math.ceil(per_record * record_bytes / cost.FIREHOSE_RECORD_ROUNDING_BYTES) * 5 * 1024
    assert billed_per_event == pytest.approx(billed / per_record)
    assert record_bytes <= billed_per_event < 5 * 1024  # less than one 5 KB record per event
    assert firehose.monthly_usd == pytest.approx(events_month * billed_per_event / 1024**3 * cost.FIREHOSE_GB)
