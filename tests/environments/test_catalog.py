"""The environment catalog: lookup, names and the errors a wrong name gets."""

from __future__ import annotations

import pytest

from pyro_mcp.environments import catalog
from pyro_mcp.errors import CallerError, NotFoundError


def test_catalog_holds_the_three_debian_variants() -> None:
    assert catalog.names() == ["debian:12", "debian:12-base", "debian:12-build"]
    assert catalog.DEFAULT_ENVIRONMENT in catalog.names()


@pytest.mark.parametrize(
    ("name", "description", "default_packages"),
    [
        ("debian:12", "Debian 12 with Git", ("bash", "coreutils", "git")),
        ("debian:12-base", "Minimal Debian 12", ("bash", "coreutils")),
        (
            "debian:12-build",
            "Debian 12 with Git and build tools",
            ("bash", "coreutils", "git", "gcc", "make", "cmake", "python3"),
        ),
    ],
)
def test_get_returns_the_contract_entry(
    name: str, description: str, default_packages: tuple[str, ...]
) -> None:
    env = catalog.get(name)
    assert env.name == name
    assert env.version == "1.0.0"
    assert env.description == description
    assert env.default_packages == default_packages


def test_every_advertised_package_is_really_installed() -> None:
    # bash and coreutils are essential in every Debian root; the rest must be asked for.
    essential = {"bash", "coreutils"}
    for env in catalog.CATALOG:
        installed = {*catalog.BASE_PACKAGES, *env.packages, *essential}
        assert set(env.default_packages) <= installed, env.name


def test_python3_is_in_every_root_for_the_guest_agent() -> None:
    assert "python3" in catalog.BASE_PACKAGES


def test_slug_is_file_system_friendly() -> None:
    assert catalog.get("debian:12").slug == "debian_12-1.0.0"
    assert catalog.get("debian:12-build").slug == "debian_12-build-1.0.0"
    slugs = [env.slug for env in catalog.CATALOG]
    assert len(set(slugs)) == len(slugs)
    assert all("/" not in s and ":" not in s for s in slugs)


@pytest.mark.parametrize("name", ["nope", "debian:11", "DEBIAN:12", "", "debian:12 "])
def test_unknown_name_lists_every_valid_name(name: str) -> None:
    with pytest.raises(NotFoundError) as caught:
        catalog.get(name)
    error = caught.value
    assert isinstance(error, CallerError)
    assert error.message == f"unknown environment {name!r}"
    text = str(error)
    assert "expected one of: debian:12, debian:12-base, debian:12-build" in text
    assert error.to_dict()["type"] == "not_found"
