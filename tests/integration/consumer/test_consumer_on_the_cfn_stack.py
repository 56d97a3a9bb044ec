"""deploy/ecs/stack.yaml in the moto server (CloudFormation ``create_stack``), and the consumer run
against the stream and buckets that stack created, found through the stack's outputs.

What moto 5.2.5 does with the stack (the figures docs/operations.md and deploy/ecs/README.md give):
the whole template is refused ("Fn::GetAtt references undefined resource DeliveryStream": moto has
no CloudFormation model for Firehose delivery streams). Of the template less the resource types
moto cannot create (``MOTO_LACKS``) and what depends on them, it creates ``MOTO_CREATES``. The
delivery stream is then made through the Firehose API from the template's own properties (the
stack's bucket, prefixes, buffering and role), and the real consumer delivers through it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from botocore.exceptions import ClientError
from cfnlint.decode import decode

from infra.aws import sync_client
from recsys import runtime
from recsys.settings import Settings
from recsys.stack import StackInfo

from .conftest import FakeRecommender, consumer_settings

STACK = Path(__file__).resolve().parents[3] / "deploy" / "ecs" / "stack.yaml"
# resource types of the stack that moto 5.2.5 has no CloudFormation model for
MOTO_LACKS = {
    "AWS::ApplicationAutoScaling::ScalableTarget",
    "AWS::ApplicationAutoScaling::ScalingPolicy",
    "AWS::CloudWatch::Alarm",
    "AWS::EC2::SecurityGroupEgress",
    "AWS::KinesisFirehose::DeliveryStream",
    "AWS::Logs::LogStream",
    "AWS::Logs::MetricFilter",
    "AWS::S3::BucketPolicy",
    "AWS::SecretsManager::Secret",
    "AWS::ServiceDiscovery::PrivateDnsNamespace",
    "AWS::ServiceDiscovery::Service",
}
# what it creates of the rest, first deploy (no image yet), existing database
MOTO_CREATES = {
    "LoadBalancerSecurityGroup", "TaskSecurityGroup", "JobsSecurityGroup", "DatabaseSecurityGroup",
    "TaskFromLoadBalancer", "Repository", "Cluster", "ServiceLogGroup", "JobsLogGroup",
    "PipelineLogGroup", "DeliveryLogGroup", "Stream", "LakeBucket", "ArtifactsBucket", "DeliveryBucket",
    "JobsTaskRole", "FirehoseRole", "LoadBalancer", "TargetGroup", "HttpListener", "AlarmTopic",
}  # fmt: skip


def references(node: Any) -> set[str]:
    """Logical ids a template fragment names through Ref, Fn::GetAtt or Fn::Sub."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                found |= {name.split(".")[0] for name in re.findall(r"\$\{([^}!][^}]*)\}", text)}
                if not isinstance(value, str):
                    found |= references(value[1])
            else:
                found |= references(value)
    elif isinstance(node, list):
        for item in node:
            found |= references(item)
    return found


def without(template: dict[str, Any], types: set[str]) -> tuple[dict[str, Any], set[str]]:
    """The template less the resources of ``types``, what refers to them (transitively) and their outputs."""
    resources = template["Resources"]
    gone = {name for name, r in resources.items() if r["Type"] in types}
    while True:
        more = {
            name
            for name, r in resources.items()
            if name not in gone
            and (references(r.get("Properties", {})) | set(listed(r.get("DependsOn")))) & gone
        }
        if not more:
            break
        gone |= more
    reduced = {**template, "Resources": {k: v for k, v in resources.items() if k not in gone}}
    reduced["Outputs"] = {k: v for k, v in template["Outputs"].items() if not references(v["Value"]) & gone}
    return reduced, gone


def listed(value: Any) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


@pytest.fixture
def network(stack: StackInfo) -> dict[str, str]:
    ec2 = sync_client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]][:2]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24", AvailabilityZone=zone)["Subnet"]["SubnetId"]
        for i, zone in enumerate(zones)
    ]
    return {"VpcId": vpc, "TaskSubnetIds": ",".join(subnets), "LoadBalancerSubnetIds": ",".join(subnets)}


@pytest.fixture
def parameters(network: dict[str, str]) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {
        **network,
        "IngressCidr": "203.0.113.0/24",
        "SourceUrlSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:recsys/source-url-MnOpQr",
        "SourceDatabaseCidr": "10.20.8.0/24",
        "DatabaseMode": "existing",
        "DatabaseUrlSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:recsys/db-url-AbCdEf",
        "RepositoryName": f"recsys-{tag}",  # moto makes up names ECR refuses (upper case)
        "DeliveryBufferSeconds": "0",
    }


@pytest.fixture
def template() -> dict[str, Any]:
    loaded, matches = decode(str(STACK))
    assert not matches and loaded is not None
    parsed: dict[str, Any] = json.loads(json.dumps(loaded, default=str))
    return parsed


@pytest.fixture
def created(
    template: dict[str, Any], parameters: dict[str, str]
) -> Iterator[tuple[str, dict[str, str], set[str]]]:
    """(stack name, outputs, logical ids moto created) of the template less what moto lacks."""
    reduced, _ = without(template, MOTO_LACKS)
    cloudformation = sync_client("cloudformation")
    name = f"recsys-{uuid.uuid4().hex[:8]}"
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=json.dumps(reduced),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )
    try:
        (described,) = cloudformation.describe_stacks(StackName=name)["Stacks"]
        assert described["StackStatus"] == "CREATE_COMPLETE", described.get("StackStatusReason")
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}
        made = {
            r["LogicalResourceId"]
            for r in cloudformation.describe_stack_resources(StackName=name)["StackResources"]
            if r.get("LogicalResourceId") and r.get("ResourceStatus") == "CREATE_COMPLETE"
        }
        yield name, outputs, made
    finally:
        with contextlib.suppress(ClientError):
            cloudformation.delete_stack(StackName=name)


def test_moto_refuses_the_whole_stack_for_want_of_firehose(
    template: dict[str, Any], parameters: dict[str, str]
) -> None:
    with pytest.raises(ClientError) as refused:
        sync_client("cloudformation").create_stack(
            StackName=f"recsys-{uuid.uuid4().hex[:8]}",
            TemplateBody=STACK.read_text(),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        )
    assert "undefined resource DeliveryStream" in str(refused.value)
    types = {r["Type"] for r in template["Resources"].values()}
    assert types >= MOTO_LACKS, "a type moto lacked is gone from the stack: update MOTO_LACKS and the docs"


def test_what_moto_creates_of_the_stack_is_what_the_template_says(
    created: tuple[str, dict[str, str], set[str]],
) -> None:
    _, outputs, made = created
    assert made == MOTO_CREATES
    s3, kinesis = sync_client("s3"), sync_client("kinesis")
    summary = kinesis.describe_stream_summary(StreamName=outputs["StreamName"])["StreamDescriptionSummary"]
    # moto's models apply the buckets' encryption but leave out their public access block,
    # versioning and lifecycle rules, and the stream's StreamEncryption: those settings are checked
    # in tests/unit/deploy only
    assert summary["OpenShardCount"] == 2
    for key in ("LakeBucketName", "ArtifactsBucketName", "DeliveryBucketName"):
        bucket = outputs[key]
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"


async def test_the_consumer_runs_against_the_stream_and_buckets_of_the_stack(
    created: tuple[str, dict[str, str], set[str]],
    template: dict[str, Any],
    database_url: str,
    tmp_path: Path,
) -> None:
    name, outputs, _ = created
    # the delivery stream moto cannot create from the template: the template's own properties
    firehose = sync_client("firehose")
    props = template["Resources"]["DeliveryStream"]["Properties"]["ExtendedS3DestinationConfiguration"]
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in sync_client("cloudformation").describe_stack_resources(StackName=name)["StackResources"]
        if r.get("LogicalResourceId") and r.get("PhysicalResourceId")
    }
    delivery = f"{name}-DeliveryStream"
    top = template["Mappings"]["App"]["Paths"]["Delivery"]
    assert props["Prefix"] == {
        "Fn::Sub": ["${Delivery}/data/", {"Delivery": {"Fn::FindInMap": ["App", "Paths", "Delivery"]}}]
    }
    firehose.create_delivery_stream(
        DeliveryStreamName=delivery,
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "BucketARN": f"arn:aws:s3:::{outputs['DeliveryBucketName']}",
            "RoleARN": sync_client("iam").get_role(RoleName=physical["FirehoseRole"])["Role"]["Arn"],
            "Prefix": f"{top}/data/",  # as the template's Fn::Sub makes them
            "ErrorOutputPrefix": f"{top}/errors/",
            "BufferingHints": {"IntervalInSeconds": 0, "SizeInMBs": 1},
            "CompressionFormat": props["CompressionFormat"],
        },
    )
    assert outputs["DeliveryUri"].endswith("/recommendations")
    settings = Settings(
        state_dir=tmp_path,
        stream=outputs["StreamName"],
        delivery_stream=delivery,
        dead_letters=outputs["DeadLettersUri"],
        consumer=consumer_settings(),
    )
    customer = 700_000 + uuid.uuid4().int % 100_000
    event = {
        "customer_number": customer,
        "city": "Nantes",
        "country": "France",
        "credit_limit": 21000.0,
        "browse_history": [{"product_code": "S10_1678", "quantity": 2, "in_shopping_cart": True}],
    }
    kinesis = sync_client("kinesis")
    good = kinesis.put_record(
        StreamName=settings.stream, PartitionKey=str(customer), Data=json.dumps(event).encode()
    )
    kinesis.put_record(StreamName=settings.stream, PartitionKey="bad", Data=b"not json")
    s3 = sync_client("s3")
    bucket = outputs["DeliveryBucketName"]

    def delivered() -> list[dict[str, Any]]:
        out = []
        for obj in s3.list_objects_v2(Bucket=bucket, Prefix=f"{top}/data/").get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out.extend(json.loads(line) for line in body.splitlines() if line.strip())
        return out

    def dead_letters() -> list[bytes]:
        out = []
        for obj in s3.list_objects_v2(Bucket=bucket, Prefix="dead-letters/").get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out.extend(base64.b64decode(json.loads(line)["data_base64"]) for line in body.splitlines())
        return out

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        async with runtime.consumer(
            settings, pool=pool, recommender=FakeRecommender(), suppression=None
        ) as consumer:
            stop = asyncio.Event()
            running = asyncio.create_task(consumer.run(stop))
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                while loop.time() < deadline:
                    if running.done():
                        running.result()
                    records = await asyncio.to_thread(delivered)
                    letters = await asyncio.to_thread(dead_letters)
                    if records and letters:
                        break
                    await asyncio.sleep(0.2)
                else:
                    raise AssertionError("nothing delivered through the stack's resources within 60 s")
            finally:
                stop.set()
                await running
    finally:
        await pool.close()
        with contextlib.suppress(ClientError):
            firehose.delete_delivery_stream(DeliveryStreamName=delivery, AllowForceDelete=True)
    (record,) = records
    assert record["event_id"] == f"{good['ShardId']}:{good['SequenceNumber']}"
    assert record["customer_number"] == customer and record["recommended_items"]
    assert letters == [b"not json"]
