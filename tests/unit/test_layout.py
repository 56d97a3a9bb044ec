"""The layout: the design card's folders are top-level packages (docs/adr/0001-layout.md).

Generic top-level names (``core``, ``service``, ``sql``...) could collide with another installed
distribution's; these tests prove none does, and that the image ships every one of them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(
    {
        name.split(".")[0]
        for name in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    }
)


def test_the_design_cards_folders_are_packages() -> None:
    assert {"service", "consumer", "model_store", "sql", "recsys"} <= set(PACKAGES)
    for name in PACKAGES:
        assert (ROOT / name / "__init__.py").is_file(), name


def test_no_other_installed_distribution_provides_our_top_level_names() -> None:
    providers = importlib.metadata.packages_distributions()
    clashes = {name: sorted(set(providers.get(name, [])) - {"recsys"}) for name in PACKAGES}
    assert {name: dists for name, dists in clashes.items() if dists} == {}


def test_each_name_imports_from_this_checkout() -> None:
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        assert Path(spec.origin).resolve().is_relative_to(ROOT), f"{name} comes from {spec.origin}"


def test_the_image_copies_every_package() -> None:
    copied = {
        line.split()[1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and not line.startswith("COPY --from")
    }
    assert set(PACKAGES) <= copied


def test_the_migrations_ship_inside_the_package() -> None:
    from importlib import resources

    names = [p.name for p in resources.files("sql").iterdir() if p.name.endswith(".sql")]
    assert names and all(name[:4].isdigit() for name in names)
