# ruff: noqa: T201  (a command-line script: it prints the table)
"""Where the image's bytes go: its size, and a table of its largest packages with what each is for.

    DOCKER=docker python -m deploy.image.sizes --image recsys:0.1.0 [--top 15] [--no-gzip]

`make image-sizes` runs it (deploy/image/build.sh sizes) with the engine it finds or starts. The
sizes are measured inside the image: for each installed distribution, the files its RECORD lists
that are still there (byte code included; the Dockerfile deletes test suites and headers), so the
rows add up to the virtualenv. "needed by" is read from the distributions' own requirements;
"what for" is PURPOSE below, and the script refuses to print a row it has no purpose for.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from deploy.image._docker import GzippedSize, docker_command, inspect_size

__all__ = ["PURPOSE", "Package", "base_of", "main", "needed_by", "table"]

# What each distribution of requirements.lock does in the product (or for which package it is there).
PURPOSE = {
    "torch": "the two-tower model: `recsys train`, and the user tower in the consumer and the API",
    "pyarrow": "Parquet: `recsys etl` writes the lake, `recsys train` reads it",
    "scipy": "scikit-learn's numerics (sparse matrices, linear algebra)",
    "numpy": "features, embeddings and model inputs as arrays",
    "sympy": "torch's symbolic shape reasoning; torch imports it when `recsys train` optimises",
    "scikit-learn": "fits the feature encoders and scalers in `recsys train`; reads the lab's pickled ones",
    "sqlalchemy": "the shop database (MySQL or PostgreSQL) in `recsys seed`, `etl` and `forget`",
    "botocore": "AWS API models, signing and retries under boto3 and aiobotocore",
    "asyncpg": "PostgreSQL for the consumer, the API and the loader",
    "psycopg-binary": "psycopg's compiled core and its libpq",
    "psycopg": "SQLAlchemy's driver for a PostgreSQL shop database",
    "networkx": "torch.fx's graph passes (torch.compile)",
    "aiobotocore": "the consumer's asynchronous AWS clients: Kinesis, Firehose, S3",
    "aiohttp": "aiobotocore's HTTP client",
    "attrs": "aiohttp's data classes",
    "setuptools": "declared by torch (torch.utils.cpp_extension builds C++ extensions)",
    "pydantic-core": "pydantic's compiled validator",
    "pydantic": "settings, events and API schemas",
    "narwhals": "scikit-learn's dataframe layer",
    "mpmath": "sympy's arbitrary-precision numbers",
    "filelock": "torch's file locks (compile caches)",
    "multidict": "aiohttp's headers and query strings",
    "fsspec": "torch's file-system layer (checkpoints on remote storage)",
    "fastapi": "the HTTP API",
    "recsys": "this product",
    "anyio": "starlette's and httpx's async layer",
    "boto3": "synchronous AWS clients: S3 object stores, stream and delivery setup",
    "jinja2": "torch's code generation (torch.compile)",
    "joblib": "scikit-learn's persistence and parallel helpers",
    "yarl": "aiohttp's URLs",
    "pymysql": "SQLAlchemy's driver for the shop's MySQL database",
    "orjson": "JSON for events, records and API answers",
    "uvicorn": "the API's HTTP server",
    "uvloop": "the API's event loop (libuv)",
    "prometheus-client": "`/metrics`",
    "s3transfer": "boto3's S3 uploads and downloads",
    "starlette": "FastAPI's web framework",
    "urllib3": "botocore's HTTP client",
    "wrapt": "aiobotocore's wrappers",
    "propcache": "yarl's cached properties",
    "frozenlist": "aiohttp and aiosignal",
    "aiosignal": "aiohttp's signals",
    "aiohappyeyeballs": "aiohttp's connection racing",
    "aioitertools": "aiobotocore's async iteration helpers",
    "opentelemetry-api": "FastAPI's optional tracing hooks",
    "httpx": "the API child fetches the consumer's metrics; `recsys demo` polls the API",
    "httpcore": "httpx's transport",
    "h11": "HTTP/1.1 for uvicorn and httpcore",
    "psutil": "process memory and CPU in `/metrics` and the benchmarks",
    "pgvector": "the vector type for asyncpg",
    "pydantic-settings": "the settings object from `RECSYS_*` variables",
    "python-dotenv": "pydantic-settings' .env support",
    "typing-extensions": "typing back-ports",
    "typing-inspection": "pydantic's type introspection",
    "annotated-types": "pydantic's constraint types",
    "annotated-doc": "FastAPI's parameter documentation",
    "certifi": "CA certificates for httpx",
    "idna": "international domain names (httpx, yarl)",
    "jmespath": "botocore's response queries",
    "python-dateutil": "botocore's timestamps",
    "six": "python-dateutil's Python 2 compatibility",
    "click": "uvicorn's command line",
    "cloudpickle": "joblib's pickling",
    "markupsafe": "jinja2's escaping",
    "threadpoolctl": "scikit-learn's BLAS thread control",
}


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    bytes: int
    requires: tuple[str, ...]


# Run inside the image by its virtualenv's Python: every distribution with the bytes of its files
# that exist and its unconditional requirements.
_PROBE = """
import importlib.metadata as m, json, os
out = []
for d in m.distributions():
    size = 0
    for f in d.files or []:
        try:
            size += os.path.getsize(f.locate())
        except OSError:
            pass
    out.append({"name": d.metadata["Name"], "version": d.version, "bytes": size,
                "requires": list(d.requires or [])})
print(json.dumps(out))
"""


def probe(image: str) -> list[Package]:
    done = subprocess.run(
        [*docker_command(), "run", "--rm", "--network", "host", "--entrypoint", "/opt/venv/bin/python",
         image, "-c", _PROBE],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [
        Package(item["name"], item["version"], item["bytes"], tuple(item["requires"]))
        for item in json.loads(done.stdout)
    ]


def needed_by(packages: Sequence[Package]) -> dict[str, list[str]]:
    """canonical name -> the installed distributions that require it, with the markers evaluated
    for this Python and the extras that installed distributions ask for (``psycopg[binary]``)."""
    parsed: dict[str, list[Requirement]] = {}
    for package in packages:
        for spec in package.requires:
            try:
                parsed.setdefault(package.name, []).append(Requirement(spec))
            except InvalidRequirement:
                continue
    extras: dict[str, set[str]] = {}
    for requirements in parsed.values():
        for requirement in requirements:
            extras.setdefault(canonicalize_name(requirement.name), set()).update(requirement.extras)
    by: dict[str, set[str]] = {}
    for name, requirements in parsed.items():
        wanted = ("", *extras.get(canonicalize_name(name), ()))
        for requirement in requirements:
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in wanted):
                by.setdefault(canonicalize_name(requirement.name), set()).add(name)
    return {name: sorted(users, key=str.lower) for name, users in by.items()}


def table(packages: Sequence[Package], base: str, base_bytes: int, image_bytes: int, top: int) -> list[str]:
    """The markdown table: the base, the ``top`` largest packages, the rest, the total."""
    ranked = sorted(packages, key=lambda p: p.bytes, reverse=True)
    users = needed_by(packages)
    unknown = [p.name for p in ranked[:top] if canonicalize_name(p.name) not in PURPOSE]
    if unknown:
        raise SystemExit(f"sizes: no purpose for {', '.join(unknown)}: add it to PURPOSE in {__file__}")

    def mb(n: int) -> str:
        return f"{n / 1e6:,.0f}" if n >= 1e6 else f"{n / 1e6:.1f}"

    def share(n: int) -> str:
        return f"{100 * n / image_bytes:.0f} %" if n >= image_bytes / 200 else "<1 %"

    lines = [
        "| what | MB | share | needed by | what for |",
        "|---|---:|---:|---|---|",
        f"| base image `{base}` | {mb(base_bytes)} | {share(base_bytes)} | - | Debian and Python |",
    ]
    for p in ranked[:top]:
        name = canonicalize_name(p.name)
        lines.append(
            f"| {p.name} {p.version} | {mb(p.bytes)} | {share(p.bytes)} | "
            f"{', '.join(users.get(name, [])) or '-'} | {PURPOSE[name]} |"
        )
    rest = ranked[top:]
    rest_bytes = sum(p.bytes for p in rest)
    lines.append(f"| {len(rest)} smaller packages | {mb(rest_bytes)} | {share(rest_bytes)} | | |")
    other = max(0, image_bytes - base_bytes - sum(p.bytes for p in packages))
    lines.append(f"| the rest (virtualenv, user, /scratch) | {mb(other)} | {share(other)} | | |")
    lines.append(f"| **the image** | **{mb(image_bytes)}** | 100 % | | |")
    return lines


def base_of(dockerfile: str, build_args: Mapping[str, str] | None = None) -> str:
    """The runtime stage's base image, with the Dockerfile's ARG defaults filled in."""
    args = dict(build_args or {})
    base = ""
    for line in dockerfile.splitlines():
        words = line.split()
        if words[:1] == ["ARG"] and "=" in words[1] and base == "":
            key, _, value = words[1].partition("=")
            args.setdefault(key, value.strip('"'))
        if words[:1] == ["FROM"]:
            base = words[1]
    for key, value in args.items():
        base = base.replace("${" + key + "}", value)
    return base


# Run inside a writable copy of the image as root: the start-up imports timed with the byte code the
# image ships, then with every .pyc deleted (the image sets PYTHONDONTWRITEBYTECODE, and its root file
# system is read-only in ECS, so without them every process compiles what it imports, every time).
STARTUP_IMPORTS = (
    "import recsys.cli, torch, pyarrow.parquet, fastapi, uvicorn, aiobotocore.session, asyncpg, sqlalchemy"
)
_BYTECODE_PROBE = """
import json, pathlib, statistics, subprocess, sys, time
def timed():
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", sys.argv[1]], check=True)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)
with_pyc = timed()
pyc = list(pathlib.Path("/opt/venv").rglob("*.pyc"))
size = sum(p.stat().st_size for p in pyc)
for p in pyc:
    p.unlink()
print(json.dumps({"with_s": with_pyc, "without_s": timed(), "pyc_bytes": size, "pyc_files": len(pyc)}))
"""


def bytecode_cost(image: str) -> str:
    """What the byte code saves at start-up, measured side by side in one container."""
    done = subprocess.run(
        [*docker_command(), "run", "--rm", "--network", "host", "--user", "0", "--entrypoint",
         "/opt/venv/bin/python", image, "-c", _BYTECODE_PROBE, STARTUP_IMPORTS],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = json.loads(done.stdout)
    return (
        f"byte code: {found['pyc_bytes'] / 1e6:,.0f} MB in {found['pyc_files']:,} .pyc files; the start-up "
        f"imports ({STARTUP_IMPORTS.removeprefix('import ')}) take {found['with_s']:.1f} s with them, "
        f"{found['without_s']:.1f} s without ({found['without_s'] / found['with_s']:.1f}x), median of 3"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.image.sizes", description=__doc__.split("\n")[0])
    parser.add_argument("--image", required=True, help="the image, e.g. recsys:0.1.0")
    parser.add_argument("--top", type=int, default=15, help="packages listed one by one (default: 15)")
    parser.add_argument("--no-gzip", action="store_true", help="skip the gzipped size (docker save | gzip)")
    parser.add_argument(
        "--bytecode",
        action="store_true",
        help="also time the start-up imports with and without the .pyc files",
    )
    args = parser.parse_args(argv)
    base = base_of((Path(__file__).resolve().parents[2] / "Dockerfile").read_text())
    image_bytes = inspect_size(args.image)
    if args.no_gzip:
        print(f"image {args.image}: {image_bytes / 1e6:,.0f} MB uncompressed")
    else:
        print(GzippedSize(args.image).line())
    print()
    print("\n".join(table(probe(args.image), base, inspect_size(base), image_bytes, args.top)))
    if args.bytecode:
        print()
        print(bytecode_cost(args.image))
    return 0


if __name__ == "__main__":
    sys.exit(main())
