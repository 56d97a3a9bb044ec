# ruff: noqa: T201  (a command-line script: it prints its output and errors)
"""Fill the ECS/IAM templates under ``deploy/ecs/templates`` with your values.

    python -m deploy.ecs.render --vars vars.json OUT_DIR        (from the repository root)
    python deploy/ecs/render.py --vars vars.json OUT_DIR        (the same, by path)
    python deploy/ecs/render.py --list                          (the variables, documented)

Standard library only, so it runs without the project installed. The rules (README.md next to this
file has the full list of variables):

- ``${NAME}`` (upper case, digits, ``_``) is a variable declared in ``variables.json``. A string that
  is exactly one placeholder takes the variable's typed value (a list of subnets, an integer count);
  inside a longer string the value is spliced in as text, and ``${NAME:string}`` is always text (an
  integer port as an environment value). IAM policy variables such as
  ``${aws:username}`` do not match and are left alone.
- A variable without a ``default`` must be given; a given name that is not declared is refused (a typo
  would otherwise be silently ignored); a value must match the variable's ``pattern``/``choices``.
- An object inside a list may carry ``"__when__": "NAME"`` (kept when NAME is non-empty) or
  ``"__when__": "NAME=value"`` (kept when NAME equals value); the key itself never reaches the output.
- Every problem is reported at once, on stderr, and the exit code is 2; nothing is written then.

The output is one JSON file per template, at the same relative path under OUT_DIR, ready for
``aws ... --cli-input-json file://OUT_DIR/<file>`` (or ``--policy-document`` for the IAM files).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "HERE",
    "RenderError",
    "Variable",
    "consistency",
    "load_variables",
    "main",
    "render_dir",
    "render_value",
]

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
VARIABLES = HERE / "variables.json"

PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(:string)?\}")
WHEN = "__when__"
TYPES = {"string": str, "int": int, "list": list}


class RenderError(Exception):
    """One or more problems with the variables or the templates; ``problems`` lists them all."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Variable:
    name: str
    description: str
    type: str = "string"
    example: Any = None
    default: Any = None
    pattern: str | None = None
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None

    @property
    def required(self) -> bool:
        return self.default is None

    def problems(self, value: Any) -> list[str]:
        """What is wrong with ``value`` for this variable (empty when it is fine)."""
        expected = TYPES[self.type]
        if self.type == "int" and isinstance(value, bool):
            return [f"{self.name}: expected an integer, got {value!r}"]
        if not isinstance(value, expected):
            return [f"{self.name}: expected a {self.type}, got {type(value).__name__} {value!r}"]
        items = value if isinstance(value, list) else [value]
        if self.type == "list" and not items:
            return [f"{self.name}: the list is empty"]
        found: list[str] = []
        for item in items:
            text = str(item)
            if self.type == "list" and not isinstance(item, str):
                found.append(f"{self.name}: list items must be strings, got {item!r}")
            elif self.choices and text not in self.choices:
                found.append(f"{self.name}: {text!r} is not one of {', '.join(self.choices)}")
            elif self.pattern and text != "" and not re.fullmatch(self.pattern, text):
                found.append(f"{self.name}: {text!r} does not match {self.pattern} ({self.description})")
            elif isinstance(item, int) and self.minimum is not None and item < self.minimum:
                found.append(f"{self.name}: {item} is below the minimum {self.minimum} ({self.description})")
            elif isinstance(item, int) and self.maximum is not None and item > self.maximum:
                found.append(f"{self.name}: {item} is above the maximum {self.maximum} ({self.description})")
            elif self.required and text == "":
                found.append(f"{self.name}: must not be empty")
        return found


def load_variables(path: Path = VARIABLES) -> dict[str, Variable]:
    """The declared variables, by name."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    declared: dict[str, Variable] = {}
    for name, spec in raw["variables"].items():
        declared[name] = Variable(
            name=name,
            description=spec["description"],
            type=spec.get("type", "string"),
            example=spec.get("example"),
            default=spec.get("default"),
            pattern=spec.get("pattern"),
            choices=tuple(spec.get("choices", ())),
            minimum=spec.get("minimum"),
            maximum=spec.get("maximum"),
        )
    return declared


def resolve(declared: Mapping[str, Variable], given: Mapping[str, Any]) -> dict[str, Any]:
    """Given values plus defaults, checked; raises RenderError listing every problem."""
    problems: list[str] = []
    for name in sorted(set(given) - set(declared)):
        problems.append(f"{name}: not a known variable (see deploy/ecs/README.md or --list)")
    values: dict[str, Any] = {}
    for name, var in declared.items():
        if name in given:
            value = given[name]
        elif var.required:
            problems.append(f"{name}: not filled in ({var.description}; e.g. {json.dumps(var.example)})")
            continue
        else:
            value = var.default
        problems.extend(var.problems(value))
        values[name] = value
    if not problems:
        problems.extend(consistency(values))
    if problems:
        raise RenderError(problems)
    return values


def fargate_memory(cpu: str) -> list[int]:
    """The memory sizes (MiB) Fargate accepts with ``cpu`` units (Linux)."""
    table = {
        "256": [512, 1024, 2048],
        "512": list(range(1024, 4096 + 1, 1024)),
        "1024": list(range(2048, 8192 + 1, 1024)),
        "2048": list(range(4096, 16384 + 1, 1024)),
        "4096": list(range(8192, 30720 + 1, 1024)),
        "8192": list(range(16384, 61440 + 1, 4096)),
        "16384": list(range(32768, 122880 + 1, 8192)),
    }
    return table.get(cpu, [])


def consistency(values: Mapping[str, Any]) -> list[str]:
    """Mistakes across variables that each look fine alone (the image pull or a secret read would fail)."""
    problems: list[str] = []
    registry, _, repository = str(values.get("IMAGE", "")).partition("/")
    repository = re.split(r"[:@]", repository, maxsplit=1)[0]
    account, _, rest = registry.partition(".dkr.ecr.")
    region = rest.split(".amazonaws.com")[0]
    if "IMAGE" in values and (account, region, repository) != (
        values.get("ACCOUNT_ID"),
        values.get("REGION"),
        values.get("ECR_REPOSITORY"),
    ):
        problems.append(
            f"IMAGE: {values['IMAGE']!r} is not in ACCOUNT_ID/REGION/ECR_REPOSITORY "
            f"({values.get('ACCOUNT_ID')}/{values.get('REGION')}/{values.get('ECR_REPOSITORY')}); "
            "the execution role may pull only from that repository"
        )
    store = values.get("SECRETS_STORE")
    for name in sorted(n for n in values if n.endswith("_SECRET_ARN")):
        service = str(values[name]).split(":")[2] if str(values[name]).count(":") >= 2 else ""
        if store and service != store:
            problems.append(f"{name}: a {service} ARN but SECRETS_STORE is {store!r}")
    for cpu_name, memory_name in (("CPU", "MEMORY"), ("JOBS_CPU", "JOBS_MEMORY")):
        if cpu_name in values and memory_name in values:
            allowed = fargate_memory(str(values[cpu_name]))
            if int(str(values[memory_name])) not in allowed:
                problems.append(
                    f"{memory_name}: {values[memory_name]} MiB is not a Fargate size for {cpu_name}="
                    f"{values[cpu_name]} (allowed: {', '.join(map(str, allowed))})"
                )
    arn, dimension = str(values.get("TARGET_GROUP_ARN", "")), values.get("TARGET_GROUP_DIMENSION")
    if dimension and not arn.endswith(":" + str(dimension)):
        problems.append(f"TARGET_GROUP_DIMENSION: {dimension!r} is not the end of TARGET_GROUP_ARN {arn!r}")
    return problems


def _keep(element: Any, values: Mapping[str, Any], where: str, problems: list[str]) -> bool:
    if not isinstance(element, dict) or WHEN not in element:
        return True
    condition = str(element[WHEN])
    name, _, wanted = condition.partition("=")
    if name not in values:
        problems.append(f"{where}: {WHEN} names an unknown variable {name!r}")
        return False
    actual = str(values[name])
    return actual == wanted if "=" in condition else actual != ""


def render_value(node: Any, values: Mapping[str, Any], where: str, problems: list[str]) -> Any:
    """``node`` with every placeholder filled; problems (unknown variables) are appended."""
    if isinstance(node, dict):
        return {
            key: render_value(child, values, f"{where}.{key}", problems)
            for key, child in node.items()
            if key != WHEN
        }
    if isinstance(node, list):
        return [
            render_value(child, values, f"{where}[{i}]", problems)
            for i, child in enumerate(node)
            if _keep(child, values, f"{where}[{i}]", problems)
        ]
    if not isinstance(node, str):
        return node
    whole = PLACEHOLDER.fullmatch(node)
    if whole and not whole.group(2):
        name = whole.group(1)
        if name not in values:
            problems.append(f"{where}: unknown variable ${{{name}}}")
            return node
        return values[name]

    def splice(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            problems.append(f"{where}: unknown variable ${{{name}}}")
            return match.group(0)
        value = values[name]
        if isinstance(value, list):
            problems.append(f"{where}: list variable ${{{name}}} used inside a longer string")
            return match.group(0)
        return str(value)

    return PLACEHOLDER.sub(splice, node)


def render_dir(
    given: Mapping[str, Any], templates: Path = TEMPLATES, variables: Path = VARIABLES
) -> dict[Path, Any]:
    """Every template rendered, keyed by its path relative to ``templates``."""
    values = resolve(load_variables(variables), given)
    problems: list[str] = []
    rendered: dict[Path, Any] = {}
    for path in sorted(templates.rglob("*.json")):
        relative = path.relative_to(templates)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            problems.append(f"{relative}: not valid JSON: {exc}")
            continue
        before = len(problems)
        rendered[relative] = render_value(document, values, str(relative), problems)
        leftover = sorted({m.group(1) for m in PLACEHOLDER.finditer(json.dumps(rendered[relative]))})
        if leftover and len(problems) == before:
            problems.append(f"{relative}: unfilled variables remain: {', '.join(leftover)}")
    if problems:
        raise RenderError(problems)
    return rendered


def describe(variables: Path = VARIABLES) -> str:
    lines = []
    for var in load_variables(variables).values():
        default = "required" if var.required else f"default {json.dumps(var.default)}"
        lines.append(f"{var.name:28} {var.type:6} {default:24} {var.description}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.ecs.render",
        description="Fill the ECS task/service/autoscaling/IAM templates with the values in a JSON file.",
    )
    parser.add_argument("out_dir", nargs="?", type=Path, help="folder for the rendered JSON files")
    parser.add_argument("--vars", type=Path, help="JSON object of variable values (see --list)")
    parser.add_argument("--list", action="store_true", help="print the variables and exit")
    parser.add_argument("--templates", type=Path, default=TEMPLATES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.list:
        print(describe())
        return 0
    if args.out_dir is None or args.vars is None:
        parser.error("give --vars FILE and OUT_DIR (or --list)")
    try:
        given = json.loads(args.vars.read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"render: error: cannot read {args.vars}: {exc.strerror}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"render: error: {args.vars} is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(given, dict):
        print(f"render: error: {args.vars} must hold one JSON object of NAME: value", file=sys.stderr)
        return 2
    try:
        rendered = render_dir(given, args.templates)
    except RenderError as exc:
        print(f"render: error: {len(exc.problems)} problem(s), nothing written:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    for relative, document in rendered.items():
        target = args.out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
