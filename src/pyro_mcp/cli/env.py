"""`pyro env list | pull | inspect | prune`."""

from __future__ import annotations

import argparse
from typing import Any

from pyro_mcp.cli.output import PhaseReporter, show
from pyro_mcp.environments import catalog


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def register(commands: Any) -> None:
    env = commands.add_parser("env", help="list, build, inspect and prune environments")
    sub = env.add_subparsers(dest="env_command", metavar="SUBCOMMAND", required=True)

    listing = sub.add_parser("list", help="list the catalog and what is installed")
    _json_flag(listing)
    listing.set_defaults(handler=_list)

    pull = sub.add_parser("pull", help="build an environment from Debian packages (cached)")
    pull.add_argument("environment", metavar="ENVIRONMENT", help=", ".join(catalog.names()))
    _json_flag(pull)
    pull.set_defaults(handler=_pull)

    inspect = sub.add_parser("inspect", help="show an environment and its manifest")
    inspect.add_argument("environment", metavar="ENVIRONMENT")
    _json_flag(inspect)
    inspect.set_defaults(handler=_inspect)

    prune = sub.add_parser("prune", help="remove stale installs and unreferenced artefacts")
    _json_flag(prune)
    prune.set_defaults(handler=_prune)


def _list(args: argparse.Namespace) -> int:
    from pyro_mcp.sdk import Pyro

    envs = Pyro().list_environments()
    payload = {"catalog_version": catalog.CATALOG_VERSION, "environments": envs}

    def render(data: dict[str, Any]) -> None:
        print(f"Catalog version: {data['catalog_version']}")
        for env in data["environments"]:
            state = "installed" if env["installed"] else "not installed"
            print(f"{env['name']:<16} [{state}] {env['description']}")

    show(payload, args.json, render)
    return 0


def _detail(title: str, env: dict[str, Any]) -> None:
    print(f"{title}: {env['name']}")
    print(f"Version: {env['version']}")
    print(f"Description: {env['description']}")
    print(f"Distribution: {env['distribution']} {env['distribution_version']}")
    print(f"Installed: {'yes' if env['installed'] else 'no'}")
    print(f"Default packages: {', '.join(env['default_packages'])}")
    print(f"Cache dir: {env['cache_dir']}")
    manifest = env.get("install_manifest")
    if manifest:
        print(f"Kernel: {manifest['kernel_version']}")
        for name, artifact in manifest["artifacts"].items():
            size_mib = artifact["size"] / (1 << 20)
            print(f"  {name:<9} {size_mib:8.1f} MiB  sha256:{artifact['sha256']}")
        print(f"Built at: {manifest['built_at']}")
    print(f"Source: {env['source']}")


def _pull(args: argparse.Namespace) -> int:
    from pyro_mcp.environments.build import PHASES
    from pyro_mcp.sdk import Pyro

    with PhaseReporter("pull", PHASES, enabled=not args.json) as progress:
        result = Pyro().pull_environment(args.environment, progress=progress)

    def render(env: dict[str, Any]) -> None:
        verb = "Built" if env["built"] else "Already installed"
        print(f"{verb} in {env['duration_ms'] / 1000:.1f} s")
        _detail("Pulled", env)

    show(result, args.json, render)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from pyro_mcp.sdk import Pyro

    show(
        Pyro().inspect_environment(args.environment), args.json, lambda e: _detail("Environment", e)
    )
    return 0


def _prune(args: argparse.Namespace) -> int:
    from pyro_mcp.sdk import Pyro

    result = Pyro().prune_environments()

    def render(data: dict[str, Any]) -> None:
        print(f"Deleted {data['count']} cached environment entries.")
        for path in data["deleted_environment_dirs"]:
            print(f"- {path}")
        if data["deleted_blobs"]:
            print(f"Deleted {len(data['deleted_blobs'])} unreferenced artefacts.")
        if data.get("deleted_snapshots"):
            print(f"Deleted {len(data['deleted_snapshots'])} stale warm-start snapshots.")

    show(result, args.json, render)
    return 0
