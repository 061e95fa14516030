"""
Benchmarks of lifespan-scoped dependencies, side by side with upstream in one run.

    python scripts/benchmark.py [--quick] [--output docs/benchmarks]
        [--fork-python PY --upstream-python PY]

Without --fork-python/--upstream-python it builds both environments itself in
build/bench/ (the fork from this repository, pristine upstream from the pinned
sdist). Every measurement runs in a fresh process (scripts/bench_worker.py);
rounds interleave the environments and the variants, and the table reports
medians and ratios:

1. No regression: upstream vs the fork on an app that does not use the scope
   (the shape of upstream's tests/benchmarks): time per request through ASGI, and
   app construction plus startup with 5,000 routes.
2. What users do today vs the fork, on the fork: a lifespan dependency, a module
   global, request.state from a lifespan, a per-request SQLite connection, and
   dishka's Scope.APP provider through its FastAPI integration.
3. Scale: startup and per-request cost with 1 to 1,000 lifespan dependencies on
   one endpoint (width) and in one chain (depth), with the fitted slope.

--quick runs few rounds and small sizes: it only shows that everything runs (CI).
Writes results.md and results.png into --output.

--instructions instead counts CPU instructions per request (valgrind's callgrind,
repeatable whatever else the machine does) for the no-regression comparison, and
writes instructions.md: wall-clock ratios near 1.0 are within this machine's noise,
instruction counts are not.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import fork_backend
from fork_backend import ROOT

WORKER = ROOT / "scripts" / "bench_worker.py"
TODAY = ["lifespan", "global", "global_dependency", "state", "per_request", "dishka"]
TODAY_LABELS = {
    "lifespan": "lifespan dependency",
    "global": "module global",
    "global_dependency": "module global through a plain dependency",
    "state": "request.state from lifespan",
    "per_request": "SQLite connection per request",
    "dishka": "dishka Scope.APP",
}


def run(python: str, *args: Any) -> dict[str, float]:
    result = subprocess.run(
        [python, str(WORKER), *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(result.stdout))


def build_environments() -> tuple[str, str]:
    base = ROOT / "build" / "bench"
    pythons = []
    sdist = fork_backend.fetch_sdist(fork_backend.read_upstream())
    for name, requirement in (
        ("venv-fork", str(ROOT)),
        ("venv-upstream", f"fastapi @ file://{sdist}"),
    ):
        venv = base / name
        python = venv / "bin" / "python"
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    requirement,
                    "dishka==1.10.1",
                    "matplotlib==3.11.2",
                ],
                check=True,
            )
        elif name == "venv-fork":
            # The fork of this checkout, never one left from an older run.
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet"]
                + ["--force-reinstall", "--no-deps", str(ROOT)],
                check=True,
            )
        pythons.append(str(python))
    return pythons[0], pythons[1]


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def spread(samples: list[float]) -> float:
    return (max(samples) - min(samples)) / median(samples)


def slope(sizes: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of values over sizes."""
    mean_x, mean_y = statistics.fmean(sizes), statistics.fmean(values)
    covariance = sum(
        (x - mean_x) * (y - mean_y) for x, y in zip(sizes, values, strict=True)
    )
    variance = sum((x - mean_x) ** 2 for x in sizes)
    fitted = covariance / variance
    return fitted, mean_y - fitted * mean_x


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks"))
    parser.add_argument("--fork-python")
    parser.add_argument("--upstream-python")
    parser.add_argument("--instructions", action="store_true")
    args = parser.parse_args(argv)
    if args.fork_python and args.upstream_python:
        fork, upstream = args.fork_python, args.upstream_python
    else:
        fork, upstream = build_environments()
        if importlib.util.find_spec("matplotlib") is None:
            # Plot with the fork's environment, which has matplotlib.
            command = [fork, __file__, *sys.argv[1:]]
            command += ["--fork-python", fork, "--upstream-python", upstream]
            os.execv(fork, command)
    if args.instructions:
        count_instructions(fork, upstream, Path(args.output))
        return
    rounds = 2 if args.quick else 7
    count = 200 if args.quick else 3000
    routes = 200 if args.quick else 5000
    sizes = [1, 10, 100] if args.quick else [1, 10, 100, 1000]

    no_regression: dict[str, dict[str, list[float]]] = {
        "per_request_us": {"upstream": [], "fork": []},
        "startup_ms": {"upstream": [], "fork": []},
    }
    today: dict[str, list[float]] = {kind: [] for kind in TODAY}
    scale: dict[tuple[str, str, int], list[float]] = {}
    for round_number in range(rounds):
        # Alternate which environment goes first, round by round.
        order = [("upstream", upstream), ("fork", fork)]
        if round_number % 2:
            order.reverse()
        for name, python in order:
            no_regression["per_request_us"][name].append(
                run(python, "requests", "plain", count, 1)["per_request_us"]
            )
            no_regression["startup_ms"][name].append(
                run(python, "startup", "plain", routes)["startup_ms"]
            )
        kinds = TODAY[round_number % len(TODAY) :] + TODAY[: round_number % len(TODAY)]
        for kind in kinds:
            today[kind].append(run(fork, "requests", kind, count, 1)["per_request_us"])
        for shape in ("width", "depth"):
            for size in sizes:
                startup = run(fork, "startup", shape, size)["startup_ms"]
                per_request = run(fork, "requests", shape, count // 4, size)
                scale.setdefault((shape, "startup_ms", size), []).append(startup)
                scale.setdefault((shape, "per_request_us", size), []).append(
                    per_request["per_request_us"]
                )
        print(f"round {round_number + 1}/{rounds} done", flush=True)

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    write_results(
        output, args.quick, rounds, count, routes, sizes, no_regression, today, scale
    )
    print(f"wrote {output / 'results.md'} and {output / 'results.png'}")


def instructions(python: str, count: int) -> int:
    """Total instructions of one worker process serving `count` requests."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
            + [python, str(WORKER), "requests", "plain", str(count), "1"],
            capture_output=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        summary = out.read_text().split("summary:")[1].split()[0]
        return int(summary)


def count_instructions(fork: str, upstream: str, output: Path) -> None:
    # Two request counts: the difference divided by the extra requests is the
    # per-request cost, free of start-up and import costs.
    small, large = 100, 400
    lines = [
        "# Instructions per request: upstream 0.165.0 vs the fork",
        "",
        "Made by `python scripts/benchmark.py --instructions`: valgrind callgrind, "
        f"the app without the scope, ({large} − {small}) requests.",
        "",
        "| environment | instructions per request |",
        "| --- | --- |",
    ]
    per_request = {}
    for name, python in (("upstream", upstream), ("fork", fork)):
        extra = instructions(python, large) - instructions(python, small)
        per_request[name] = extra / (large - small)
        lines.append(f"| {name} | {per_request[name]:,.0f} |")
    ratio = per_request["fork"] / per_request["upstream"]
    lines += ["", f"fork / upstream = {ratio:.5f}", ""]
    output.mkdir(parents=True, exist_ok=True)
    (output / "instructions.md").write_text("\n".join(lines))
    print(f"wrote {output / 'instructions.md'}: fork / upstream = {ratio:.5f}")


def write_results(
    output: Path,
    quick: bool,
    rounds: int,
    count: int,
    routes: int,
    sizes: list[int],
    no_regression: dict[str, dict[str, list[float]]],
    today: dict[str, list[float]],
    scale: dict[tuple[str, str, int], list[float]],
) -> None:
    import platform

    lines = [
        "# Benchmarks: lifespan-scoped dependencies",
        "",
        f"Made by `python scripts/benchmark.py{' --quick' if quick else ''}` on "
        f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {rounds} interleaved rounds, {count} "
        "requests per measurement through the ASGI interface (no server, no "
        "network). Medians; lower is better. "
        + ("Quick mode: too few samples to read anything into." if quick else ""),
        "",
        "## 1. No regression: upstream 0.165.0 vs the fork (app without the scope)",
        "",
        "| measurement | upstream | fork | fork / upstream | spread upstream / fork |",
        "| --- | --- | --- | --- | --- |",
    ]
    for metric, label in (
        ("per_request_us", "time per request (µs)"),
        ("startup_ms", f"construction + startup, {routes} routes (ms)"),
    ):
        up = median(no_regression[metric]["upstream"])
        fk = median(no_regression[metric]["fork"])
        lines.append(
            f"| {label} | {up:.1f} | {fk:.1f} | {fk / up:.3f} | "
            f"{spread(no_regression[metric]['upstream']):.1%} / "
            f"{spread(no_regression[metric]['fork']):.1%} |"
        )
    up_rps = 1e6 / median(no_regression["per_request_us"]["upstream"])
    fk_rps = 1e6 / median(no_regression["per_request_us"]["fork"])
    lines += [
        "",
        f"Requests per second: fork / upstream = {fk_rps / up_rps:.3f} (goal ≥ 0.99); "
        "startup: goal ≤ 1.05. Spread: (slowest − fastest round) / median, the "
        "run-to-run noise of this machine.",
        "",
        "## 2. What users do today vs the lifespan scope (on the fork)",
        "",
        "| way to reach the shared resource | time per request (µs) | vs module global |",
        "| --- | --- | --- |",
    ]
    base = median(today["global"])
    for kind in TODAY:
        value = median(today[kind])
        lines.append(f"| {TODAY_LABELS[kind]} | {value:.1f} | {value / base:.3f} |")
    lines += [
        "",
        "## 3. Scale (on the fork)",
        "",
        "| shape | n | startup (ms) | time per request (µs) |",
        "| --- | --- | --- | --- |",
    ]
    fits = []
    for shape in ("width", "depth"):
        for size in sizes:
            startup = median(scale[(shape, "startup_ms", size)])
            per_request = median(scale[(shape, "per_request_us", size)])
            lines.append(f"| {shape} | {size} | {startup:.1f} | {per_request:.1f} |")
        for metric, unit in (("startup_ms", "ms"), ("per_request_us", "µs")):
            values = [median(scale[(shape, metric, size)]) for size in sizes]
            fitted, intercept = slope(sizes, values)
            largest = values[-1]
            predicted = intercept + fitted * sizes[-1]
            fits.append(
                f"- {shape}, {metric.split('_')[0].replace('per', 'per request')}: "
                f"slope {fitted:.4f} {unit} per dependency (intercept "
                f"{intercept:.2f} {unit}); at n={sizes[-1]} the line predicts "
                f"{predicted:.1f}, measured {largest:.1f}."
            )
    lines += [
        "",
        "Width: one endpoint declaring n lifespan dependencies (n lookups per "
        "request). Depth: a chain of n lifespan dependencies, the endpoint "
        "declaring the top one (one lookup per request). Least-squares fit:",
        "",
        *fits,
        "",
        "![results](results.png)",
        "",
    ]
    (output / "results.md").write_text("\n".join(lines))
    plot(output / "results.png", no_regression, today)


def plot(
    path: Path,
    no_regression: dict[str, dict[str, list[float]]],
    today: dict[str, list[float]],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    metric = no_regression["per_request_us"]
    left.bar(["upstream", "fork"], [median(metric["upstream"]), median(metric["fork"])])
    left.set_title("App without the scope: µs per request")
    labels = [TODAY_LABELS[kind] for kind in TODAY]
    right.barh(labels, [median(today[kind]) for kind in TODAY])
    right.set_title("Shared resource, on the fork: µs per request")
    right.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
