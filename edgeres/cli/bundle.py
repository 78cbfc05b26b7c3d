"""``edgeres bundle`` (a run folder -> an app bundle) and ``edgeres verify`` (a bundle's hashes)."""

from __future__ import annotations

from pathlib import Path

import click

from edgeres.cli.app import cli
from edgeres.cli.options import echo_json, echo_table, fold_option, json_option, labels_option


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), required=True, help="The bundle folder.")
@click.option("--force", is_flag=True, help="Replace a non-empty bundle folder.")
@labels_option
@fold_option
@click.option("--name", default=None, help="Model name in the metadata and file names (default: the run's).")
@click.option("--description", default=None, help="Model description in the metadata.")
@click.option("--model-version", default="1", show_default=True, help="Model version in the metadata.")
@click.option("--author", default=None, help="Author in the metadata.")
@click.option("--license", "license_", default=None, help="Licence in the metadata, e.g. Apache-2.0.")
@json_option
def bundle(run, output_dir, force, labels, fold, name, description, model_version, author, license_, as_json):
    """Package RUN's validated int8 models for a mobile app.

    Writes the int8 .tflite with TFLite Metadata (input normalisation, colour
    space, labels: what Android's ML Model Binding and the TFLite Task Library
    read), the int8 .onnx with the same facts in metadata_props, labels.txt,
    a README with Kotlin and Swift snippets, and manifest.json with the
    SHA-256 of every file, shapes, quantization and the run's accuracy and
    latency.  The folder is written whole or not at all.

    \b
    Example:
      edgeres bundle edgeres-out -o app/ --fold-preprocessing
    """
    from edgeres.pipeline.bundle import BundleConfig, run_bundle

    cfg = BundleConfig(run=run, out=output_dir, force=force, labels=labels, fold=fold, name=name,
                       description=description, version=model_version, author=author, license=license_)
    m = run_bundle(cfg, log=lambda msg: click.echo(f"edgeres: {msg}", err=True))
    if as_json:
        echo_json(m)
        return
    print_manifest(m, output_dir)


def print_manifest(m: dict, out: Path) -> None:
    rows = []
    for x in m["models"]:
        i, o, v = x["input"], x["output"], x.get("validation") or {}
        quant = "" if i["scale"] is None else f" ({i['scale']:.4g}, {i['zero_point']})"
        rows.append((x["file"], f"{i['dtype']}{quant} {'x'.join(map(str, i['shape']))}",
                     f"{o['dtype']} {o['shape'][-1]} {o['scores']}", "yes" if x["preprocessing"]["folded"] else "no",
                     "-" if v.get("top1") is None else f"{v['top1']:.2f}",
                     "-" if v.get("agreement") is None else f"{v['agreement']:.2f}",
                     "-" if v.get("p50_ms") is None else f"{v['p50_ms']:.3f}"))
    echo_table(("model", "input", "output", "folded", "top-1 %", "agree %", "p50 ms"), rows)
    click.echo(f"\nwrote {out}/ ({len(m['files'])} files, {m['classes']} classes from "
               f"{m['labels']['source']}); check it with: edgeres verify {out}")


@cli.command()
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(path_type=Path))
@json_option
def verify(bundle_dir, as_json):
    """Check that every file of an app BUNDLE is the one its manifest lists.

    Size and SHA-256 of each file, and the manifest's schema version.  Exit
    code 0 when the bundle is intact, 9 (one line naming the file) when not.
    'edgeres validate' and 'edgeres bench' run the same check first.
    """
    from edgeres.bundle.manifest import verify as check

    m = check(bundle_dir)
    if as_json:
        echo_json({"bundle": str(bundle_dir), "ok": True, "schema_version": m["schema_version"],
                   "files": m["files"]})
        return
    for name, entry in m["files"].items():
        click.echo(f"ok  {entry['sha256'][:16]}  {entry['size_bytes']:>10,}  {name}")
    click.echo(f"{bundle_dir}: {len(m['files'])} files intact (bundle schema {m['schema_version']})")
