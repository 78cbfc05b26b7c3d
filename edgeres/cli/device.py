"""Commands that run on the device itself, with only numpy and a runtime: ``bench``, ``validate``,
``check`` and ``targets``."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from edgeres.cli.app import cli
from edgeres.cli.options import (
    FiniteFloat,
    echo_json,
    echo_table,
    json_option,
    on_bad_image_option,
    preprocess_options,
    progress,
    seed_option,
    target_option,
    threads_option,
    val_size_option,
)
from edgeres.cli.remote import (
    devices,
    finish,
    preprocess_args,
    print_bench,
    print_validate,
    remote_options,
    run_on_devices,
    ship,
)
from edgeres.core.errors import UsageError
from edgeres.core.limits import MAX_RUNS, MAX_SECONDS, MAX_WARMUP
from edgeres.core.plots import check_plot_file


@cli.command()
@json_option
def targets(as_json):
    """List the device profiles that --target accepts."""
    from edgeres.devices.targets import default_target_name, list_targets

    items = list_targets()
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in items], indent=2))
        return
    default = default_target_name()
    rows = [(t.name + (" *" if t.name == default else ""), t.arch, str(t.threads), t.tflite.delegate,
             t.tflite.io_dtype, t.onnx_scheme, t.description) for t in items]
    echo_table(("target", "arch", "threads", "delegate", "tflite io", "onnx int8", "description"), rows)
    click.echo("\n* default on this machine")


# ---------------------------------------------------------------- bench / validate (light: no TensorFlow)


@cli.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--threads", default=None, metavar="N[,N...]", help="Thread counts to sweep, e.g. 1,2,4 "
              "(default: the target's).")
@click.option("--runs", type=click.IntRange(1, MAX_RUNS), default=100, show_default=True,
              help="Timed runs per configuration.")
@click.option("--min-time", type=FiniteFloat(0, MAX_SECONDS), default=0.0, show_default=True,
              help="Keep timing until this many seconds have passed.")
@click.option("--warmup", type=click.IntRange(0, MAX_WARMUP), default=10, show_default=True,
              help="Untimed runs first.")
@click.option("--delegate", default=None, help="TFLite: xnnpack, none (built-in kernels), reference, edgetpu. "
              "ONNX: execution providers, e.g. CPUExecutionProvider (default: the target's).")
@target_option
@click.option("--data", type=click.Path(), default=None,
              help="Feed a real image (folder or .npz) instead of random data.")
@click.option("--shape", default=None, metavar="N,H,W,C", help="Input shape for models with dynamic dims, as "
              "N,H,W,C whatever the model's layout (an NCHW model gets N,C,H,W). It must agree with the model's "
              "fixed dims; N is the batch timed (default 1, or the model's fixed batch).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Write a plot of the latency distributions: .png, .svg, .pdf, ... (needs matplotlib).")
@preprocess_options
@remote_options
@json_option
def bench(models, threads, runs, min_time, warmup, delegate, target, data, shape, plot_path, preprocess, remote,
          as_json):
    """Benchmark one or more .tflite / .onnx MODELS (batch 1), or app bundles.

    A model exported with a fixed batch of N is timed at batch N (one
    inference is N images), and the output says so.

    A bundle folder stands for all its models; a bundle is checked against
    its manifest first and refused (exit 9) if any file changed.

    Reports min, p50, p90, p99, mean and stdev, first-inference and load
    time, peak RSS, which ops ran on the delegate, and the machine.  Runs
    with only numpy and a runtime installed.

    \b
    Example:
      edgeres bench edgeres-out/model_int8.tflite edgeres-out/model_int8.onnx --threads 1,2,4
    """
    from edgeres.devices.targets import resolve_target
    from edgeres.measure.bench import (
        BenchConfig,
        coverage_text,
        parse_shape,
        parse_threads,
        plot,
        resolve_models,
        run_bench,
    )

    t = resolve_target(target)
    if plot_path is not None:
        check_plot_file(plot_path)
    models = resolve_models(models)  # app bundles: every hash checks first; a bundle folder gives its models
    cfg = BenchConfig(models=models, threads=parse_threads(threads) if threads else (t.threads,),
                      delegate=delegate or (t.tflite.delegate if target else None), runs=runs, warmup=warmup,
                      min_time=min_time, data=data, preprocess=preprocess, shape=parse_shape(shape))
    remotes = devices(remote, t)
    if remotes:
        files, names = ship([*models, data])
        argv = ["bench", *names[:len(models)], "--threads", ",".join(map(str, cfg.threads)), "--runs", str(runs),
                "--warmup", str(warmup), "--min-time", repr(min_time)]
        argv += (["--delegate", cfg.delegate] if cfg.delegate else []) + (["--shape", shape] if shape else [])
        argv += ["--data", names[-1], *preprocess_args(preprocess)] if data else []
        results = run_on_devices(remotes, argv, files)
        print_bench(results, run_bench(cfg) if remote["compare_local"] else None, as_json)
        finish(results)
        return
    with progress(sys.stderr.isatty() and not as_json)("benchmarking", len(models) * len(cfg.threads)) as bar:
        report = run_bench(cfg, progress=bar.update)
    if plot_path:
        plot(report, plot_path)
    for r in report["results"]:
        for w in r["warnings"]:
            click.echo(f"edgeres: warning: {Path(r['model']).name} ({r['threads']} threads): {w}", err=True)
    if as_json:
        echo_json(report)
        return
    rows = []
    for r in report["results"]:
        lat = r["latency_ms"]
        rows.append((Path(r["model"]).name, str(r["threads"]), r["delegate"], f"{lat['min']:.3f}",
                     f"{lat['p50']:.3f}", f"{lat['p90']:.3f}", f"{lat['p99']:.3f}", f"{lat['mean']:.3f}",
                     f"{lat['stdev']:.3f}", str(lat["runs"]), f"{lat['first']:.2f}", f"{r['load_ms']:.1f}",
                     f"{r['peak_rss_mb']:.0f}", coverage_text(r["ops"])))
    echo_table(("model", "thr", "delegate", "min", "p50", "p90", "p99", "mean", "stdev", "runs", "first",
                 "load", "rss MB", "ops"), rows)
    for r in report["results"]:
        tp = r.get("throughput") or {}
        if tp.get("fraction_of_ceiling"):
            text = (f"{Path(r['model']).name} ({r['threads']} threads): {tp['gops']:.1f} GOP/s, "
                    f"{100 * tp['fraction_of_ceiling']:.0f}% of the {tp['precision']} ceiling measured here "
                    f"({tp['ceiling_gops']:.0f} GOP/s: {tp['ceiling']['method']}, same runtime and threads)")
            if tp.get("fraction_of_peak"):
                text += (f"; {100 * tp['fraction_of_peak']:.0f}% of the theoretical peak of "
                         f"{tp['int8_peak_gops']:.0f} GOP/s [{tp['peak_basis']}]")
                if tp.get("peak_note"):
                    text += f" ({tp['peak_note']})"
            click.echo(text)
    for r in report["results"]:
        if r["batch"] > 1:
            why = "the model's fixed batch" if r.get("fixed_batch") else "--shape"
            click.echo(f"{Path(r['model']).name} ({r['threads']} threads): timed at batch {r['batch']} ({why}): "
                       f"one inference is {r['batch']} images, p50 {r['per_image_p50_ms']:.3f} ms per image")
    m = report["machine"]
    r0 = report["results"][0]
    batches = sorted({r["batch"] for r in report["results"]})
    batch = f"batch {batches[0]}" if len(batches) == 1 else "batch " + " or ".join(map(str, batches)) + " (above)"
    click.echo(f"\nms per inference, {batch}, {r0['input']} input; {m['cpu']}, {m['cores']} cores, {m['arch']}; "
               f"{r0['runtime']} {r0['runtime_version']}; Python {m['python']}")


@cli.command()
@click.argument("model")
@click.option("--data", type=click.Path(), required=True,
              help="Labelled images: class-subfolder folder or .npz with y.")
@click.option("--reference", default=None, help="Another .tflite/.onnx to compare outputs with "
              "(agreement, SQNR, max abs diff).")
@threads_option(default=2, help="Inference threads.")
@click.option("--delegate", default=None, help="As for 'edgeres bench'.")
@val_size_option
@seed_option
@on_bad_image_option
@click.option("--scale", type=FiniteFloat(), default=None,
              help="As for convert. Each of --scale/--mean/--std/--resize replaces its own field only; the "
                   "others come from the bundle's manifest or the run folder's report.json (else the defaults).")
@click.option("--mean", default=None, metavar="R,G,B")
@click.option("--std", default=None, metavar="R,G,B")
@click.option("--resize", type=click.Choice(["crop", "stretch"]), default=None)
@click.option("--shape", default=None, metavar="N,H,W,C", help="Input shape for models with dynamic H, W or C, "
              "as N,H,W,C whatever the model's layout (N is not used).")
@target_option
@remote_options
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Validate in shards on Ray (pip install 'edgeres[cluster]'), the same figures: plain --ray "
                   "starts a private Ray on this machine's cores; --ray auto joins the cluster running here "
                   "(ray start) or RAY_ADDRESS's; --ray HOST:PORT a head node; --ray ray://HOST:PORT a remote "
                   "cluster through Ray Client. Give it after MODEL (or as --ray=ADDRESS). Every node needs "
                   "edgeres and a runtime, and must read --data at the same absolute path; the models are "
                   "sent. --threads is per task.")
@json_option
def validate(model, data, reference, threads, delegate, val_size, seed, on_bad_image, scale, mean, std, resize,
             shape, target, remote, ray_address, as_json):
    """Accuracy of one .tflite/.onnx MODEL on labelled --data, on this device (or on Ray: --ray).

    Preprocessing comes from the manifest of the app bundle or the report.json
    of the run folder the model sits in; each of --scale/--mean/--std/--resize
    given replaces its own field.  A --reference from another run gets its own
    recorded preprocessing.  MODEL may be a bundle folder (its TFLite model is
    validated); a bundle is checked against its manifest first and refused
    (exit 9) if any file changed.  With --reference, also compares outputs.
    """
    from edgeres.core.data import Preprocess
    from edgeres.devices.targets import resolve_target
    from edgeres.measure.bench import parse_shape
    from edgeres.measure.validate import (
        effective_preprocess,
        recorded_seed,
        reference_preprocess,
        run_report,
        run_validate,
    )

    given = Preprocess.given(scale, mean, std, resize)
    dims = parse_shape(shape)
    if val_size and click.get_current_context().get_parameter_source("seed") != ParameterSource.COMMANDLINE:
        recorded = recorded_seed(model, data)
        if recorded is not None and recorded != seed:  # the run's own sample of the same data
            seed = recorded
            click.echo(f"edgeres: info: --seed {seed} from report.json: the images the run's report measured",
                       err=True)
    remotes = devices(remote, resolve_target(target) if target else None)
    if remotes and ray_address is not None:
        raise UsageError("give --ray or --remote (or a --target with an ssh_host), not both: --ray runs on a Ray "
                         "cluster, --remote on the device itself")
    if remotes:
        from edgeres.bundle.manifest import resolve

        (bundled, *_), m = resolve(model)  # checked here; the device gets the model and its preprocessing
        pre = None
        if m is not None or given:  # the manifest is not sent, and partial options need the record: merge here
            model = str(bundled)
            pre = effective_preprocess(model, given)[0]
        if reference:
            resolve(reference)
            here = pre or effective_preprocess(model, given)[0]
            if reference_preprocess(reference, given, here) != here:
                raise UsageError(f"{Path(model).name} and --reference {Path(reference).name} recorded different "
                                 "preprocessing, and the device gets one: validate each with --remote on its own")
        files, names = ship([model, data, reference])
        if run_report(model).is_file():  # the device reads the host activation (and preprocessing) from it
            files["report.json"] = run_report(model)
        argv = ["validate", names[0], "--data", names[1], "--threads", str(threads), "--seed", str(seed),
                "--on-bad-image", on_bad_image, *preprocess_args(pre)]
        argv += (["--reference", names[2]] if reference else []) + (["--delegate", delegate] if delegate else [])
        argv += (["--val-size", str(val_size)] if val_size else []) + (["--shape", shape] if shape else [])
        results = run_on_devices(remotes, argv, files)
        local = None
        if remote["compare_local"]:
            local = run_validate(model, data, reference=reference, preprocess=given, threads=threads,
                                 delegate=delegate, val_size=val_size, seed=seed, on_error=on_bad_image, shape=dims)
        print_validate(results, local, as_json)
        finish(results)
        return
    executor = None
    if ray_address is not None:
        from edgeres.cluster import RayExecutor

        executor = RayExecutor(ray_address)
    with executor or contextlib.nullcontext(), progress(sys.stderr.isatty() and not as_json)("validating", 0) as bar:
        result = run_validate(model, data, reference=reference, preprocess=given, threads=threads,
                              delegate=delegate, val_size=val_size, seed=seed, on_error=on_bad_image,
                              progress=bar.update, executor=executor, shape=dims)
    if as_json:
        echo_json(result)
        return
    keys = [("top1", "top-1 %", ".2f"), ("top5", "top-5 %", ".2f"), ("agreement", "agreement %", ".2f"),
            ("sqnr_db", "SQNR dB", ".1f"), ("max_abs_diff", "max abs diff", ".4g"), ("top1_drop", "drop pp", "+.2f")]
    if "bundle" in result:
        click.echo(f"bundle {model}: {result['bundle']['files']} files intact")
    batch = f", fixed batch of {result['batch']}" if result.get("batch") else ""
    click.echo(f"{Path(result['model']).name}: {result['count']} images from {result['data']['source']} "
               f"({result['runtime']} {result['runtime_version']}, {result['threads']} threads{batch}; "
               f"preprocessing from {result['preprocess']['from']})")
    for key, label, spec in keys:
        if result.get(key) is not None:
            click.echo(f"  {label:<14} {result[key]:{spec}}")
    if "reference" in result and result["reference"].get("top1") is not None:
        own = " (its own recorded preprocessing)" if "preprocess" in result["reference"] else ""
        click.echo(f"  reference      {Path(reference).name}: top-1 {result['reference']['top1']:.2f}%{own}")
    if "executor" in result:
        ex = result["executor"]
        where = "a local Ray" if ex["address"] == "local" else f"Ray at {ex['address']}"
        click.echo(f"  executor       {where}: {ex['nodes']} node(s), {ex['cpus']} CPUs, {ex['shards']} shard(s)")


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--target", default=None, metavar="NAME|FILE",
              help="Device profile whose rules to check (today: the Edge TPU's). Default: coral-edgetpu, "
                   "unless --runtime is given.")
@click.option("--runtime", "runtime_spec", default=None, metavar="SPEC",
              help="Check that this runtime can load MODEL (.tflite or .onnx): e.g. tflite-runtime==2.14, "
                   "ai-edge-litert==1.2, tensorflow==2.21, onnxruntime==1.16, or 'installed'.")
@click.option("--remote", "remote_host", default=None, metavar="HOST",
              help="Ask this device over SSH which runtime it has, and check against that (as --runtime).")
@click.option("--remote-python", default="python3", show_default=True, metavar="PATH",
              help="The device's interpreter.")
@click.option("--ssh-config", type=click.Path(dir_okay=False), default=None, help="ssh -F FILE.")
@json_option
def check(model, target, runtime_spec, remote_host, remote_python, ssh_config, as_json):
    """Statically check a MODEL against a target's requirements or a runtime's op versions.

    For the Coral Edge TPU (--target, the default): full int8 quantization,
    the supported ops and their constraints, static shapes, batch 1, and the
    on-chip parameter cache.  Lists each op that would run on the CPU and the
    first one, which splits the graph.

    With --runtime: whether that runtime release can load the .tflite or
    .onnx MODEL, naming each op (or opset) that is too new for it.  With both
    options, both checks run.  Exit code 0 when compatible, 6 when not.
    """
    from edgeres.core.errors import ConversionError
    from edgeres.devices.edgetpu import ON_CHIP_BYTES, check_model, format_check
    from edgeres.devices.targets import resolve_target

    failures, texts, results = [], [], {}
    if remote_host is not None:
        from edgeres.devices.remote import Remote, device_runtimes, runtime_for

        if runtime_spec is not None:
            raise UsageError("give --runtime or --remote, not both: --remote asks the device which runtime it has")
        device = Remote(remote_host, remote_python, ssh_config)
        runtime_spec = runtime_for(model, device_runtimes(device))
        if runtime_spec is None:
            raise UsageError(f"{remote_host} has no runtime for {Path(model).name} installed for {remote_python}: "
                             f"on the device run: {remote_python} -m pip install 'edgeres[runtime]'")
    if runtime_spec is not None:
        from edgeres.devices.compat import check_runtime, format_runtime_check

        r = results["runtime"] = check_runtime(model, runtime_spec)
        texts.append(format_runtime_check(r))
        if not r["compatible"]:
            rt = r["runtime"]
            failures.append(f"{Path(model).name} cannot be loaded by {rt['name']} {rt['version']}: "
                            f"{r['problems'][0]['reason']}")
    if runtime_spec is None or target is not None:
        t = resolve_target(target or "coral-edgetpu")
        if t.tflite.delegate != "edgetpu":
            raise UsageError(f"'edgeres check' knows the Edge TPU's rules; target '{t.name}' uses "
                             f"{t.tflite.delegate}, which runs every TFLite op")
        limit = t.constraints.max_tensor_bytes or ON_CHIP_BYTES
        result = results["edgetpu"] = check_model(model, max_tensor_bytes=limit)
        texts.append(format_check(result))
        if not result["compatible"]:
            reason = result["errors"][0] if result["errors"] else (
                f"op #{result['first_unsupported']['index']} {result['first_unsupported']['op']} "
                f"is not supported: {result['first_unsupported']['reason']}")
            failures.append(f"{Path(model).name} is not Edge TPU compatible: {reason}")
    if as_json:
        echo_json(results[next(iter(results))] if len(results) == 1 else results)
    else:
        click.echo("\n\n".join(texts))
    if failures:
        raise ConversionError("; and ".join(failures))
