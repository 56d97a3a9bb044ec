"""The batch jobs' wiring: settings -> where things are -> the one function of their package.

Each job checks its options (a :class:`~core.errors.ConfigError` names the flag), resolves its
locations once with ``recsys.bootstrap`` (the database URL or the embedded PostgreSQL, where AWS calls
go, buckets on an emulator), runs its package's function and returns that function's summary. The
commands parse flags into settings, call one of these and print the summary; tests and benchmarks
call these too, never a command module.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from core.errors import ConfigError
from infra.logs import get_logger
from recsys import bootstrap
from recsys.settings import Settings

if TYPE_CHECKING:
    from compliance import ForgetReport
    from consumer.producer import ProduceSummary
    from etl.pipeline import EtlSummary
    from etl.seed import SeedSummary
    from infra.objectstore import ObjectStore
    from infra.pg import Migration
    from model_store.loader import LoadSummary
    from model_store.training import TrainSummary

__all__ = [
    "KEEP_VERSIONS",
    "etl",
    "forget",
    "import_lab_artifacts",
    "load_vectors",
    "migrate",
    "produce",
    "seed",
    "train",
]

log = get_logger(__name__)

KEEP_VERSIONS = 3  # loaded model versions kept by load-vectors, the active one included


async def migrate(settings: Settings) -> list[Migration]:
    """``recsys migrate``: the migrations not yet applied, applied in order."""
    from infra.pg import migrate as apply

    return await apply(bootstrap.database_url(settings))


def seed(
    settings: Settings, *, scale: float = 1.0, seed: int = 42, reset_ratings: bool = False
) -> SeedSummary:
    """``recsys seed``: the shop's tables in the source database, generated where missing."""
    from etl.seed import seed as generate

    if not 0 < scale <= 10_000:
        raise ConfigError(f"--scale must be in (0, 10000], got {scale}")
    return generate(bootstrap.source_url(settings), scale=scale, seed=seed, reset_ratings=reset_ratings)


def etl(
    settings: Settings,
    *,
    engine: str | None = None,
    since: str | None = None,
    window: str | None = None,
    retention_days: float | None = None,
    update_policy: str | None = None,
    partition_by: str | None = None,
    store: ObjectStore | None = None,
    notes: Callable[[str], None] = log.info,
) -> EtlSummary:
    """``recsys etl``: one run of the source into the lake, with the Python engine or Spark (local).

    ``store`` replaces the lake's object store (tests hand in a faulty one); ``notes`` hears what the
    run decided on its own (no suppression list to read). Raises
    :class:`~etl.gates.QualityGateFailed` when a data-quality gate refuses the run.
    """
    from etl.pipeline import parse_window, run_etl, thresholds_of
    from infra.objectstore import open_store

    lake_uri = bootstrap.require(settings.lake, "--lake")
    if retention_days is not None and retention_days <= 0:
        raise ConfigError(f"--retention-days must be positive, got {retention_days:g}")
    started = parse_window(since, window, datetime.now(UTC))
    bootstrap.prepare_aws(settings, lake_uri)
    source_url = bootstrap.source_url(settings)
    suppressed = _suppression_reader(settings)
    if suppressed is None:
        notes("suppression list: none (no RECSYS_DATABASE_URL and no embedded stack running)")
    options: dict[str, object] = {
        "update_policy": update_policy or settings.etl.update_policy,
        "partition_by": partition_by or settings.etl.partition_by,
        "retention_days": retention_days,
        "file_max_rows": settings.etl.file_max_rows,
        "rating_time_column": settings.etl.rating_time_column,
        "update_time_column": settings.etl.update_time_column,
        "since": started,
        "thresholds": thresholds_of(settings.etl),
        "store": store if store is not None else open_store(lake_uri),
        "suppressed": suppressed,
    }
    if (engine or settings.etl.engine) == "spark":
        return _spark(settings, source_url, lake_uri, options)
    return run_etl(
        source_url,
        lake_uri,
        chunk_rows=settings.etl.chunk_rows,
        row_group_rows=settings.etl.row_group_rows,
        **options,  # type: ignore[arg-type]
    )


def _spark(settings: Settings, source_url: str, lake_uri: str, options: dict[str, object]) -> EtlSummary:
    """The Spark engine on a local master (started for the run and stopped after it)."""
    try:
        from etl.spark_job import run_local
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith(("pyspark", "py4j")):
            raise
        raise ConfigError(
            "--engine spark needs pyspark (pip install -r requirements-spark.lock; make install-dev "
            "does); on AWS the Glue job provides Spark (deploy/glue/)"
        ) from None
    return run_local(settings.etl, source_url, lake_uri, **options)


def _suppression_reader(settings: Settings) -> Callable[[], frozenset[int]] | None:
    """Reads the suppression list of the product database: ``RECSYS_DATABASE_URL``, else the
    embedded stack's when it is running (started by ``recsys stack up`` or a command before), else
    there is none to read."""
    import asyncio

    from infra.suppression import read_suppressed
    from recsys.stack import LocalStack

    if settings.database_url is not None:
        url = bootstrap.database_url(settings)
    else:
        info = LocalStack(settings.state_dir).info()
        if info is None:
            return None
        url = info.database_url

    def read() -> frozenset[int]:
        return asyncio.run(read_suppressed(url))

    return read


def train(settings: Settings, *, epochs: int | None = None, seed: int | None = None) -> TrainSummary:
    """``recsys train``: the latest lake run -> a new, verified artifact version."""
    from model_store.training import train as fit

    lake = bootstrap.require(settings.lake, "--lake")
    artifacts = bootstrap.require(settings.artifacts, "--artifacts")
    overrides = {k: v for k, v in {"epochs": epochs, "seed": seed}.items() if v is not None}
    cfg = settings.train.model_copy(update=overrides)
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {cfg.epochs}")
    bootstrap.prepare_aws(settings, lake, artifacts)
    return fit(lake, artifacts, cfg)


async def load_vectors(
    settings: Settings, *, version: str | None = None, keep: int = KEEP_VERSIONS
) -> LoadSummary:
    """``recsys load-vectors``: an artifact version (default: the latest) into pgvector, made active."""
    from model_store.loader import load_vectors as load

    artifacts = bootstrap.require(settings.artifacts, "--artifacts")
    if keep < 1:
        raise ConfigError(f"--keep must be at least 1, got {keep}")
    bootstrap.prepare_aws(settings, artifacts)
    url = bootstrap.database_url(settings)
    return await load(url, artifacts, version, keep=keep, recall_target=settings.recall_target)


def import_lab_artifacts(settings: Settings, source: str, *, trust_pickle: bool) -> str:
    """``recsys import-lab-artifacts``: the lab's files -> a new artifact version (its name)."""
    from model_store.lab_import import REFUSAL
    from model_store.lab_import import import_lab_artifacts as convert

    if not trust_pickle:
        from core.errors import ArtifactError

        raise ArtifactError(REFUSAL)
    artifacts = bootstrap.require(settings.artifacts, "--artifacts")
    bootstrap.prepare_aws(settings, source, artifacts, *([settings.lake] if settings.lake else []))
    return convert(source, artifacts, trust_pickle=True, lake_uri=settings.lake)


def produce(
    settings: Settings,
    *,
    count: int | None = None,
    duration_s: float | None = None,
    rate: float | None = None,
    aggregate: bool = False,
    seed: int = 0,
    shards: int = 2,
) -> ProduceSummary:
    """``recsys produce``: browsing events of the shop's customers and products onto the stream (the
    stream is created, with ``shards``, on an emulator only)."""
    from consumer.producer import produce as put
    from consumer.setup import ensure_stream
    from etl.source import load_catalog

    if (count is None) == (duration_s is None):
        raise ConfigError("give exactly one of --count N and --duration S")
    emulator = bootstrap.prepare_aws(settings)
    catalog = load_catalog(bootstrap.source_url(settings))
    if emulator:
        ensure_stream(settings.stream, shards)
    return put(
        settings.stream,
        catalog.customers,
        catalog.product_codes,
        count=count,
        duration_s=duration_s,
        rate=rate,
        aggregate=aggregate,
        seed=seed,
    )


async def forget(
    settings: Settings,
    customer_number: int,
    *,
    actor: str,
    delivery: str | None = None,
    dry_run: bool = False,
    suppress: bool = False,
) -> ForgetReport:
    """``recsys forget``: the customer's data out of every store the product writes."""
    from compliance import Targets
    from compliance import forget as erase

    bootstrap.prepare_aws(settings)
    dead_letters = settings.dead_letters
    if dead_letters is None and (settings.state_dir / "dead-letters").is_dir():
        dead_letters = str(settings.state_dir / "dead-letters")  # `recsys consume`'s default
    targets = Targets(
        database_url=bootstrap.database_url(settings),
        lake=settings.lake,
        artifacts=settings.artifacts,
        delivery=delivery,
        dead_letters=dead_letters,
    )
    return await erase(customer_number, targets, actor=actor, dry_run=dry_run, suppress_events=suppress)
