"""The Dockerfile agrees with the CLI, the API, the task definition and the project's pins.

The Dockerfile is parsed here (`make image-test` builds and runs the image itself): its entry point
must be a real `recsys` command, its health check must probe a real route (and work: it is run
against a local server), and it must install exactly requirements.lock, which must pin every
dependency of the project; requirements-local.lock (the `local` extra: the embedded stack) stays
out of the image.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .conftest import ProbeTarget, probe_target


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.base}"
        return found[-1]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(ARGs before the first FROM, stages) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.fixture(scope="module")
def dockerfile(root: Path) -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile((root / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def runtime(dockerfile: tuple[dict[str, str], list[Stage]]) -> Stage:
    return dockerfile[1][-1]


@pytest.fixture(scope="module")
def builder(dockerfile: tuple[dict[str, str], list[Stage]]) -> Stage:
    stages = dockerfile[1]
    assert len(stages) >= 2, "not a multi-stage build"
    return stages[0]


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


# --- the image's shape --------------------------------------------------------------------------


def test_slim_runtime_stage_from_the_builder_as_a_non_root_user(
    dockerfile: tuple[dict[str, str], list[Stage]],
    builder: Stage,
    runtime: Stage,
    run_container: dict[str, Any],
) -> None:
    global_args, _ = dockerfile
    version = global_args["PYTHON_VERSION"]
    assert Version(version).release[:2] == sys.version_info[:2]  # the Python the project is tested on
    assert builder.name == "builder"
    assert runtime.base.startswith("python:${PYTHON_VERSION}-slim")
    assert builder.base == runtime.base
    assert any(a.startswith("--from=builder /opt/venv ") for a in runtime.all("COPY"))
    assert not any("pip install" in a for a in runtime.all("RUN")), "no installs in the runtime stage"
    user = runtime.last("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000
    assert run_container["user"] == user
    assert runtime.last("STOPSIGNAL") == "SIGTERM"


def test_the_read_only_task_writes_only_to_a_volume_the_user_owns(
    runtime: Stage, run_container: dict[str, Any]
) -> None:
    """ECS mounts a root-owned 0755 bind mount unless the image declares the path as a VOLUME: then it
    copies the image directory's owner and mode, which must be the runtime user's."""
    container = run_container
    assert container["readonlyRootFilesystem"] is True
    (mount,) = container["mountPoints"]
    path = mount["containerPath"]
    assert exec_form(runtime.last("VOLUME")) == [path]
    uid = runtime.last("USER").split(":")[0]
    setup = " ".join(runtime.all("RUN"))
    assert f"mkdir -p {path}" in setup
    assert re.search(rf"chown {uid}:\d+ {re.escape(path)}\b", setup)
    env = env_of(runtime)
    assert env["TMPDIR"] == env["HOME"] == path
    assert env["RECSYS_STATE_DIR"].startswith(path + "/")
    assert runtime.last("WORKDIR") == path


def test_entry_point_runs_recsys_run_in_exec_form(
    root: Path, runtime: Stage, run_container: dict[str, Any]
) -> None:
    entrypoint = exec_form(runtime.last("ENTRYPOINT"))
    command = exec_form(runtime.last("CMD"))
    assert Path(entrypoint[0]).name == "recsys" and entrypoint[0].startswith("/opt/venv/bin/")
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["recsys"] == "recsys.cli:main"
    assert entrypoint[1:] + command == ["run"]
    container = run_container
    assert container["command"] == command

    from recsys.cli import build_parser

    parser = build_parser()
    assert "run" in subcommands(parser), "`recsys run` is not a registered command"
    args = parser.parse_args(command)
    assert callable(getattr(args, "func", None))


def test_the_container_listens_on_the_api_port_on_every_interface(
    runtime: Stage, run_container: dict[str, Any]
) -> None:
    from recsys.settings import Settings

    env = env_of(runtime)
    port = int(env["RECSYS_PORT"])
    assert runtime.last("EXPOSE") == str(port)
    assert port == Settings.model_fields["port"].default
    assert env["RECSYS_HOST"] == "0.0.0.0"
    assert env["RECSYS_LOG_FORMAT"] == "json"
    assert "/opt/venv/bin" in env["PATH"].split(":")[0]
    container = run_container
    assert container["portMappings"][0]["containerPort"] == port


# --- the health check ---------------------------------------------------------------------------


def healthcheck_command(runtime: Stage) -> list[str]:
    args = runtime.last("HEALTHCHECK")
    options, _, command = args.partition("CMD ")
    assert "--timeout=" in options and "--start-period=" in options
    return exec_form(command)


async def test_healthcheck_probes_the_api_liveness_route(
    runtime: Stage, run_container: dict[str, Any]
) -> None:
    command = healthcheck_command(runtime)
    assert command[0] == "python"  # slim images have no curl
    probed = re.findall(r"/[a-z]+z\b", command[-1])
    assert probed == ["/healthz"]
    container = run_container
    assert container["healthCheck"]["command"] == ["CMD", *command]

    import httpx

    from recsys.runtime import api_app
    from recsys.settings import Settings

    app = api_app(Settings())
    assert "/readyz" in app.openapi()["paths"]  # the load balancer's target group health check
    # liveness answers without a database or a model (no lifespan runs here)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://task") as client:
        answer = await client.get(probed[0], timeout=10)
        missing = await client.get("/nothing-here", timeout=10)
    assert answer.status_code == 200
    assert missing.status_code == 404


@pytest.fixture
def probe_server() -> Iterator[ProbeTarget]:
    with probe_target("/healthz") as target:
        yield target


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_passes_only_on_a_healthy_answer(
    runtime: Stage, probe_server: ProbeTarget, status: int, healthy: bool
) -> None:
    probe_server.status = status
    command = healthcheck_command(runtime)
    done = subprocess.run(
        [sys.executable, *command[1:]],
        env={"RECSYS_PORT": str(probe_server.port)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode == 0) is healthy


# --- dependencies -------------------------------------------------------------------------------


def lock_pins(root: Path, lock: str = "requirements.lock") -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in (root / lock).read_text().splitlines():
        line = raw.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{lock}: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_image_installs_exactly_the_lock_with_cpu_torch(builder: Stage) -> None:
    copies = builder.all("COPY")
    lock_copy = next(i for i, a in enumerate(copies) if a.startswith("requirements.lock "))
    source_copy = next(i for i, a in enumerate(copies) if a.split()[0] == "recsys")
    assert lock_copy < source_copy, "dependencies must be their own layer, before the source"
    # the virtualenv has no pip of its own: the base's pip installs into it
    assert any(re.search(r"python -m venv --without-pip /opt/venv\b", a) for a in builder.all("RUN"))
    pip = "python -m pip --python /opt/venv/bin/python"
    installs = [a for a in builder.all("RUN") if f"{pip} install" in a]
    assert len(installs) == 2
    deps, project = installs
    assert "-r /tmp/requirements.lock" in deps
    assert "--no-deps" in deps and f"{pip} check" in deps
    # where torch==2.13.0+cpu comes from: a build argument whose default is the PyTorch CPU index
    assert "${PIP_EXTRA}" in deps
    (extra,) = [a for a in builder.all("ARG") if a.startswith("PIP_EXTRA=")]
    assert json.loads(extra.partition("=")[2]) == "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert not re.search(r"whl/cu\d+|nvidia", deps + extra)
    assert re.search(rf"{re.escape(pip)} install --no-deps --require-virtualenv /src(\s|$)", project)


def test_the_build_needs_no_frontend_image(root: Path) -> None:
    """A `# syntax=` line makes BuildKit pull a frontend image from a registry; the engine's own
    frontend already runs `RUN --mount=type=cache`."""
    first = (root / "Dockerfile").read_text().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first, re.IGNORECASE)


def test_lock_pins_the_cpu_build_of_torch(root: Path) -> None:
    pins = lock_pins(root)
    assert pins["torch"].endswith("+cpu")
    assert not any(name.startswith("nvidia-") for name in pins)


def test_lock_covers_every_project_dependency(root: Path) -> None:
    pins = lock_pins(root)
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is a dependency but not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (spec, pins[name])


def test_the_local_lock_pins_the_local_extra_and_nothing_of_the_image(root: Path) -> None:
    runtime, local = lock_pins(root), lock_pins(root, "requirements-local.lock")
    assert not set(runtime) & set(local), "a package is in both locks"
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    for spec in project["optional-dependencies"]["local"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in local, f"{requirement.name} is in the local extra but not in requirements-local.lock"
        assert requirement.specifier.contains(local[name], prereleases=True), (spec, local[name])


@pytest.mark.parametrize(
    ("locks", "groups"),
    [
        (("requirements.lock",), ("dependencies",)),  # the image
        (("requirements.lock", "requirements-local.lock"), ("dependencies", "local")),  # make install
    ],
)
def test_lock_is_closed_so_no_deps_installs_a_working_set(
    root: Path, locks: tuple[str, ...], groups: tuple[str, ...]
) -> None:
    """Every requirement of every pinned distribution (and of the extras the project asks for) is pinned
    too, in a matching version: `pip install --no-deps -r requirements.lock` misses nothing, and
    neither does the same with requirements-local.lock added."""
    pins = {name: version for lock in locks for name, version in lock_pins(root, lock).items()}
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    specs = [
        spec
        for group in groups
        for spec in (
            project["dependencies"] if group == "dependencies" else project["optional-dependencies"][group]
        )
    ]
    extras: dict[str, set[str]] = {}
    for spec in specs:
        requirement = Requirement(spec)
        extras.setdefault(canonicalize_name(requirement.name), set()).update(requirement.extras)
    missing: list[str] = []
    for name, version in pins.items():
        dist = importlib.metadata.distribution(name)
        assert Version(dist.version) == Version(version), (
            f"{name}: installed {dist.version}, locked {version}"
        )
        for spec in dist.requires or []:
            requirement = Requirement(spec)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in ("", *extras.get(name, ()))
            )
            if not wanted:
                continue
            dep = canonicalize_name(requirement.name)
            if dep not in pins or not requirement.specifier.contains(pins[dep], prereleases=True):
                missing.append(f"{name} needs {spec} (locked: {pins.get(dep)})")
    assert missing == []


# --- the build context --------------------------------------------------------------------------


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_what_the_build_copies(root: Path, builder: Stage) -> None:
    patterns = [
        line.strip()
        for line in (root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        word for args in builder.all("COPY") for word in args.split()[:-1] if not word.startswith("--")
    ]
    for source in sources:
        assert (root / source).exists(), f"COPY {source}: not in the repository"
        assert not dockerignore_excludes(patterns, source), f"COPY {source}: excluded by .dockerignore"
    assert not dockerignore_excludes(patterns, "recsys/cli.py")
    assert not dockerignore_excludes(patterns, "sql/0001_base.sql")
    for unwanted in (
        ".venv/bin/python",
        ".git/HEAD",
        ".state/pg/PG_VERSION",
        "tests/conftest.py",
        "bench/_harness.py",
        "deploy/ecs/vars.json",
        "recsys/__pycache__/cli.cpython-311.pyc",
        "recsys.egg-info/PKG-INFO",
        ".env",
    ):
        assert dockerignore_excludes(patterns, unwanted), f"{unwanted} would be sent to the build"


def _runtime_imports(package: Path) -> dict[str, set[str]]:
    """Top-level modules imported by the package at run time (not under ``if TYPE_CHECKING:``)."""
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        type_only: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                type_only.update(id(child) for stmt in node.body for child in ast.walk(stmt))
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(package.parent)))
    return found


def test_the_image_has_every_package_the_code_imports(root: Path, top_packages: list[str]) -> None:
    """The image holds only requirements.lock: a runtime import of a dev-only package (httpx, packaging,
    pytest...) would work in the development venv and fail in the container. The embedded stack's
    packages (requirements-local.lock) may be imported by recsys/stack.py alone, which checks for
    them first (``require_local_packages``). The Spark engine's (requirements-spark.lock) may be
    imported by etl/spark_job.py alone: the Glue job brings Spark, and ``recsys etl --engine spark``
    names what to install when it is missing."""
    pins = lock_pins(root)
    local = set(lock_pins(root, "requirements-local.lock"))
    spark = set(lock_pins(root, "requirements-spark.lock"))
    providers = importlib.metadata.packages_distributions()
    missing: list[str] = []
    imports: dict[str, set[str]] = {}
    for package in top_packages:
        for module, where in _runtime_imports(root / package).items():
            imports.setdefault(module, set()).update(where)
    for module, where in sorted(imports.items()):
        if module in sys.stdlib_module_names or module in {*top_packages, "__future__"}:
            continue
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if dists & local and where == {"recsys/stack.py"}:
            continue
        if dists & spark and where == {"etl/spark_job.py"}:
            continue
        if not dists & set(pins):
            missing.append(
                f"{module} (from {sorted(dists) or 'no installed distribution'}) in {sorted(where)[:3]}"
            )
    assert missing == []
