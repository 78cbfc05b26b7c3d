"""``--remote HOST`` for ``bench`` and ``validate``: the same command, run by the device's own edgeres over SSH."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from edgeres.cli.options import echo_json, echo_table
from edgeres.core.metrics import dash


def remote_options(fn):
    """--remote/--remote-python/--ssh-config/--compare-local, turned into one ``remote`` argument (a dict)."""
    @click.option("--remote", "remote_hosts", multiple=True, metavar="HOST[,HOST...]",
                  help="Run on these devices over SSH (user@host or a ~/.ssh/config alias; repeat or comma-separate "
                       "for a fleet). Default: the target's ssh_host, else this machine.")
    @click.option("--remote-python", default=None, metavar="PATH",
                  help="The device's interpreter with edgeres[runtime] (default: the target's, else python3).")
    @click.option("--ssh-config", type=click.Path(dir_okay=False), default=None,
                  help="An ssh_config file to use instead of ~/.ssh/config (ssh -F).")
    @click.option("--compare-local", is_flag=True, help="Also run here, and show both.")
    @functools.wraps(fn)
    def wrapper(*args, remote_hosts, remote_python, ssh_config, compare_local, **kwargs):
        kwargs["remote"] = {"hosts": remote_hosts, "python": remote_python, "ssh_config": ssh_config,
                            "compare_local": compare_local}
        return fn(*args, **kwargs)
    return wrapper


def devices(remote: dict, target) -> list:
    """The devices to run on: --remote, else the target's ssh_host; empty means this machine."""
    from edgeres.core.errors import UsageError
    from edgeres.devices.remote import Remote, parse_hosts

    for value in remote["hosts"]:  # an empty --remote (e.g. an unset shell variable) must not run here instead
        if not parse_hosts([value]):
            raise UsageError(f"--remote {value!r} names no host: give user@host or a ~/.ssh/config alias "
                             "(HOST[,HOST...]), or leave --remote out to run on this machine")
    hosts = parse_hosts(remote["hosts"]) or ([target.ssh_host] if target is not None and target.ssh_host else [])
    python = remote["python"] or (target.ssh_python if target is not None and target.ssh_python else "python3")
    return [Remote(h, python, remote["ssh_config"]) for h in hosts]


def ship(paths: list[str | None]) -> tuple[dict[str, Path], list[str | None]]:
    """Files to copy and the names the device's command uses for them (unique, in the device's folder)."""
    files: dict[str, Path] = {}
    names: list[str | None] = []
    for p in paths:
        if p is None:
            names.append(None)
            continue
        path = Path(p)
        name = path.name or "data"
        if name in files and files[name] != path:
            name = f"{len(files)}_{name}"
        files[name] = path
        names.append(name)
    return files, names


def preprocess_args(pre) -> list[str]:
    if pre is None:
        return []
    return ["--scale", repr(pre.scale), "--mean", ",".join(map(repr, pre.mean)), "--std",
            ",".join(map(repr, pre.std)), "--resize", pre.resize]


def run_on_devices(remotes: list, argv: list[str], files: dict[str, Path]) -> list:
    from edgeres.devices.remote import run_fleet

    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        from edgeres.core.errors import ModelError

        raise ModelError(f"{missing[0]} does not exist")
    return run_fleet(remotes, argv, files)


def finish(results: list) -> None:
    """Exit non-zero when any device failed (with the first failure's code and reason as the one error line)."""
    from edgeres.devices.remote import RemoteError

    failed = [r for r in results if not r.ok]
    for r in failed[1:]:
        click.echo(f"edgeres: warning: {r.error}", err=True)
    if failed:
        raise RemoteError(failed[0].error + (f" ({len(failed)} of {len(results)} devices failed)"
                                             if len(results) > 1 else ""), failed[0].exit_code or 1)


def _devices_json(results: list, key: str, local: dict | None) -> None:
    echo_json({"devices": [{"host": r.host, "ok": r.ok, "error": r.error or None, "seconds": r.seconds,
                            key: r.result} for r in results], "local": local})


def print_bench(results: list, local: dict | None, as_json: bool) -> None:
    if as_json:
        _devices_json(results, "report", local)
        return
    local_p50 = {(Path(x["model"]).name, x["threads"]): x["latency_ms"]["p50"] for x in (local or {}).get(
        "results", [])}
    rows = []
    for r in results:
        if not r.ok:
            rows.append((r.host, "-", "-", "-", "-", "-", "-", "-", f"FAILED: {r.error}"))
            continue
        m = r.result["machine"]
        for x in r.result["results"]:
            lat, name = x["latency_ms"], Path(x["model"]).name
            here = local_p50.get((Path(x["model"]).name, x["threads"]))
            rows.append((r.host, name, str(x["threads"]), x["delegate"], f"{lat['p50']:.3f}", f"{lat['p90']:.3f}",
                         str(lat["runs"]), f"{here:.3f}" if here else "-",
                         f"{m['cpu']}, {m['cores']} cores, {m['arch']}; {x['runtime']} {x['runtime_version']}"))
    echo_table(("device", "model", "thr", "delegate", "p50 ms", "p90 ms", "runs", "here p50", "machine, runtime"),
               rows)


def print_validate(results: list, local: dict | None, as_json: bool) -> None:
    if as_json:
        _devices_json(results, "result", local)
        return
    rows = []
    for r in results:
        if not r.ok:
            rows.append((r.host, "-", "-", "-", "-", f"FAILED: {r.error}"))
            continue
        x, m = r.result, r.result.get("machine", {})
        rows.append((r.host, str(x["count"]), dash(x.get("top1"), ".2f"), dash(x.get("agreement"), ".2f"),
                     dash((local or {}).get("top1"), ".2f"), f"{m.get('cpu', '?')}, {m.get('arch', '?')}; "
                     f"{x['runtime']} {x['runtime_version']}"))
    echo_table(("device", "images", "top-1 %", "agree %", "here top-1 %", "machine, runtime"), rows)

