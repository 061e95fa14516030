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
   app construction plus startup (and plus the first request) with 5,000 routes.
2. What users do today vs the fork, on the fork: a lifespan dependency, a module
   global, request.state from a lifespan, a per-request SQLite connection, and
   dishka's Scope.APP provider through its FastAPI integration.
3. Scale: startup and per-request cost with 1 to 1,000 lifespan dependencies on
   one endpoint (width) and in one chain (depth), with the fitted slope.
4. Startup: the fork's lifespan dependencies set up one after the other (the
   default) vs concurrently (`FastAPI(concurrent_lifespan_dependencies=True)`),
   startup and teardown through the ASGI lifespan, for slow independent
   dependencies (async, and async with sync ones in the thread pool), a chain, and
   many trivial ones; judged against the goals of issue 12. The per-request row
   of its goals comes from instructions.md (below), when --output has one.

--quick runs few rounds and small sizes: it only shows that everything runs (CI).
In section 4 it sleeps 20 ms instead of 200 ms (2 ms instead of 20 ms in the
chain), sets up 100 trivial dependencies instead of 1,000, measures every shape
of one mode in one process, in one round, and judges no goal.
Writes results.md and results.png into --output.

--instructions instead counts CPU instructions per request (valgrind's callgrind,
repeatable whatever else the machine does) for the no-regression comparison and
for a request to an endpoint with lifespan dependencies, the concurrent set-up
switch off vs on, and writes instructions.md: wall-clock ratios near 1.0 are
within this machine's noise, instruction counts are not.
"""

import argparse
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
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


MODES = ["sequential", "concurrent"]


@dataclass(frozen=True)
class Shape:
    """A shape of section 4: its lifespan dependencies, and its goal."""

    name: str
    label: str
    size: int
    # Each dependency sleeps this long before its yield and after it.
    sleep_ms: float
    # Lifespan runs per process, each with a new app: the first is cold.
    cycles: int = 1

    def spec(self) -> str:
        return f"{self.name}:{self.size}:{self.sleep_ms:g}:{self.cycles}"


def startup_shapes(quick: bool) -> list[Shape]:
    sleep = 20 if quick else 200
    trivial = 100 if quick else 1000
    return [
        Shape(
            "independent",
            f"8 independent async dependencies, {sleep} ms each",
            8,
            sleep,
        ),
        Shape(
            "mixed",
            f"4 async + 2 sync (thread pool) dependencies, {sleep} ms each",
            4,
            sleep,
        ),
        Shape("chain", f"a chain of 8, {sleep // 10} ms each", 8, sleep / 10),
        Shape(
            "trivial",
            f"{trivial:,} trivial independent async dependencies",
            trivial,
            0,
            cycles=2 if quick else 5,
        ),
    ]


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
        "first_request_ms": {"upstream": [], "fork": []},
    }
    today: dict[str, list[float]] = {kind: [] for kind in TODAY}
    scale: dict[tuple[str, str, int], list[float]] = {}
    shapes = startup_shapes(args.quick)
    startup_modes = StartupModes(shapes)
    if args.quick:
        print(
            "quick mode, section 4: sleeps of 20 ms instead of 200 ms, 100 trivial "
            "dependencies instead of 1,000, every shape of a mode in one process, "
            "one round, no goal judged",
            flush=True,
        )
    for round_number in range(rounds):
        # Alternate which environment goes first, round by round.
        order = [("upstream", upstream), ("fork", fork)]
        if round_number % 2:
            order.reverse()
        for name, python in order:
            no_regression["per_request_us"][name].append(
                run(python, "requests", "plain", count, 1)["per_request_us"]
            )
            measured = run(python, "startup", "plain", routes)
            for metric in ("startup_ms", "first_request_ms"):
                no_regression[metric][name].append(measured[metric])
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
        startup_modes.measure(fork, round_number, quick=args.quick)
        print(f"round {round_number + 1}/{rounds} done", flush=True)

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    write_results(
        output,
        args.quick,
        rounds,
        count,
        routes,
        sizes,
        no_regression,
        today,
        scale,
        startup_modes,
    )
    print(f"wrote {output / 'results.md'} and {output / 'results.png'}")
    for row in startup_modes.goals(output / "instructions.md", quick=args.quick):
        print("startup goal: " + " | ".join(row))


def ms(value: float) -> str:
    """Milliseconds, with three decimals below 1 ms."""
    return f"{value:.1f}" if value >= 1 else f"{value:.3f}"


class StartupModes:
    """Section 4: the measurements of each shape in both modes, round by round."""

    def __init__(self, shapes: list[Shape]) -> None:
        self.shapes = shapes
        # (shape, mode, metric) -> one value per round. The metrics: the cold
        # run's startup_ms and shutdown_ms; warm_startup_ms and warm_shutdown_ms,
        # the median of the runs after it in the same process (if any).
        self.samples: dict[tuple[str, str, str], list[float]] = {}
        # (shape, mode) -> the worker's verdict on the chain order, one per run.
        self.orders: dict[tuple[str, str], list[str]] = {}

    def measure(self, fork: str, round_number: int, *, quick: bool) -> None:
        # Alternate which mode goes first, and rotate the shapes, round by round.
        modes = MODES[::-1] if round_number % 2 else MODES
        if quick:
            # One round, every shape of one mode in one process: about 2 s.
            if round_number:
                return
            for mode in modes:
                self.record(mode, run(fork, "lifespan", mode, *self.specs()))
            return
        turn = round_number % len(self.shapes)
        for shape in self.shapes[turn:] + self.shapes[:turn]:
            for mode in modes:
                self.record(mode, run(fork, "lifespan", mode, shape.spec()))

    def specs(self) -> list[str]:
        return [shape.spec() for shape in self.shapes]

    def record(self, mode: str, result: dict[str, Any]) -> None:
        for key, measured in result.items():
            shape = key.split(":")[0]
            for metric in ("startup_ms", "shutdown_ms"):
                cold, *warm = measured[metric]
                self.add(shape, mode, metric, cold)
                if warm:
                    self.add(shape, mode, f"warm_{metric}", median(warm))
            self.orders.setdefault((shape, mode), []).append(measured["order"])

    def add(self, shape: str, mode: str, metric: str, value: float) -> None:
        self.samples.setdefault((shape, mode, metric), []).append(value)

    def median(self, shape: str, mode: str, metric: str) -> float:
        return median(self.samples[(shape, mode, metric)])

    def ratio(self, shape: str, metric: str) -> float:
        return self.median(shape, "concurrent", metric) / self.median(
            shape, "sequential", metric
        )

    def shape(self, name: str) -> Shape:
        return next(shape for shape in self.shapes if shape.name == name)

    def table(self) -> list[str]:
        lines = [
            "| shape | phase | sequential (ms) | concurrent (ms) | "
            "concurrent / sequential | spread sequential / concurrent |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for shape in self.shapes:
            for metric, phase in (
                ("startup_ms", "startup"),
                ("shutdown_ms", "teardown"),
                ("warm_startup_ms", "startup, warm"),
                ("warm_shutdown_ms", "teardown, warm"),
            ):
                if (shape.name, "sequential", metric) not in self.samples:
                    continue
                values = [self.median(shape.name, mode, metric) for mode in MODES]
                spreads = [
                    spread(self.samples[(shape.name, mode, metric)]) for mode in MODES
                ]
                lines.append(
                    f"| {shape.label} | {phase} | {ms(values[0])} | "
                    f"{ms(values[1])} | {values[1] / values[0]:.3f} | "
                    f"{spreads[0]:.1%} / {spreads[1]:.1%} |"
                )
        return lines

    def goals(self, instructions: Path, *, quick: bool) -> list[tuple[str, ...]]:
        """(shape, goal, measured, met) for each goal of issue 12."""
        rows: list[tuple[str, ...]] = []

        def verdict(met: bool) -> str:
            return "not judged (quick mode)" if quick else ("met" if met else "NOT met")

        independent, mixed = self.shape("independent"), self.shape("mixed")
        for metric, phase in (("startup_ms", "startup"), ("shutdown_ms", "teardown")):
            goal = 1.2 * independent.sleep_ms
            value = self.median("independent", "concurrent", metric)
            before = self.median("independent", "sequential", metric)
            rows.append(
                (
                    f"{independent.label}: {phase}",
                    f"≤ {goal:.0f} ms",
                    f"{value:.0f} ms (sequential {before:.0f} ms, "
                    f"{before / value:.1f}× faster)",
                    verdict(value <= goal),
                )
            )
        goal = 1.3 * mixed.sleep_ms
        value = self.median("mixed", "concurrent", "startup_ms")
        before = self.median("mixed", "sequential", "startup_ms")
        rows.append(
            (
                f"{mixed.label}: startup",
                f"≤ {goal:.0f} ms",
                f"{value:.0f} ms (sequential {before:.0f} ms)",
                verdict(value <= goal),
            )
        )
        ratio = self.ratio("chain", "startup_ms")
        orders = [order for mode in MODES for order in self.orders[("chain", mode)]]
        kept = sum(order == "ok" for order in orders)
        rows.append(
            (
                f"{self.shape('chain').label}: startup",
                "unchanged: ratio 0.95 to 1.05, set up in the chain's order "
                "(torn down in the reverse one)",
                f"ratio {ratio:.3f}; order kept in {kept} of {len(orders)} runs "
                "(both modes)",
                verdict(0.95 <= ratio <= 1.05 and kept == len(orders)),
            )
        )
        trivial = self.shape("trivial")
        ratio = self.ratio("trivial", "startup_ms")
        rows.append(
            (
                f"{trivial.label}: startup",
                "≤ 1.1× sequential",
                f"ratio {ratio:.2f} ("
                f"{self.median('trivial', 'concurrent', 'startup_ms'):.1f} ms vs "
                f"{self.median('trivial', 'sequential', 'startup_ms'):.1f} ms)",
                verdict(ratio <= 1.1),
            )
        )
        switch = switch_ratio(instructions)
        rows.append(
            (
                "per request (an endpoint with 8 lifespan dependencies)",
                "unchanged: callgrind instructions, switch on / off within ±0.5%",
                f"ratio {switch:.5f} (instructions.md)"
                if switch is not None
                else "not measured: run `--instructions` into the same --output",
                "not judged" if switch is None else verdict(abs(switch - 1) <= 0.005),
            )
        )
        return rows


def instructions(python: str, count: int, *app: str) -> int:
    """Total instructions of one worker process serving `count` requests."""
    app = app or ("plain", "1")
    kind, size, *switch = app
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
            + [python, str(WORKER), "requests", kind, str(count), size, *switch],
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
    lines += [
        "",
        f"fork / upstream = {ratio:.5f}",
        "",
        "## The concurrent set-up switch: per request",
        "",
        "On the fork, a request to an endpoint declaring 8 lifespan dependencies, "
        "the app built with `FastAPI(concurrent_lifespan_dependencies=...)` off and "
        "on (the values are set up before the requests; the switch should change "
        "nothing per request).",
        "",
        "| `concurrent_lifespan_dependencies` | instructions per request |",
        "| --- | --- |",
    ]
    switch = {}
    for name, app in (("off", ("width", "8")), ("on", ("width", "8", "concurrent"))):
        extra = instructions(fork, large, *app) - instructions(fork, small, *app)
        switch[name] = extra / (large - small)
        lines.append(f"| {name} | {switch[name]:,.0f} |")
    switch_on = switch["on"] / switch["off"]
    lines += ["", f"{SWITCH_LINE} = {switch_on:.5f}", ""]
    output.mkdir(parents=True, exist_ok=True)
    (output / "instructions.md").write_text("\n".join(lines))
    print(
        f"wrote {output / 'instructions.md'}: fork / upstream = {ratio:.5f}, "
        f"{SWITCH_LINE} = {switch_on:.5f}"
    )


SWITCH_LINE = "switch on / switch off"


def switch_ratio(path: Path) -> float | None:
    """The per-request ratio of the switch in instructions.md, if it has one."""
    if not path.exists():
        return None
    found = re.search(rf"^{SWITCH_LINE} = ([0-9.]+)$", path.read_text(), re.M)
    return float(found.group(1)) if found else None


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
    startup_modes: StartupModes,
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
        (
            "first_request_ms",
            f"construction + startup + first request, {routes} routes (ms)",
        ),
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
        "run-to-run noise of this machine. The app's routes are in an included "
        "router, whose effective routes upstream builds at the first request "
        "(hence the last row); the fork walks the routes at startup only in an "
        "app that declares lifespan dependencies.",
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
        *startup_section(output, quick, startup_modes),
        "![results](results.png)",
        "",
    ]
    (output / "results.md").write_text("\n".join(lines))
    plot(output / "results.png", no_regression, today, startup_modes)


def startup_section(
    output: Path, quick: bool, startup_modes: StartupModes
) -> list[str]:
    trivial = startup_modes.shape("trivial")
    lines = [
        "## 4. Startup: sequential vs concurrent set-up (on the fork)",
        "",
        "The fork's lifespan dependencies set up one after the other (`FastAPI()`, "
        "the default) and concurrently (`FastAPI(concurrent_lifespan_dependencies="
        "True)`): each measurement in a fresh process, both modes in every round, "
        "which goes first alternating. Startup: from sending `lifespan.startup` to "
        "receiving `lifespan.startup.complete`, driving the app's ASGI lifespan "
        "directly (asyncio); teardown: from `lifespan.shutdown` to "
        "`lifespan.shutdown.complete`. A sleeping dependency is an async generator "
        "awaiting `anyio.sleep()` before its `yield` and again after it (a sync one "
        "calls `time.sleep()`, in the thread pool); each dependency of the chain "
        "needs the previous one. The first lifespan run of a process (cold, what a "
        "server does) is the one measured and judged; for the trivial "
        "dependencies, warm is "
        + (
            "the run after it"
            if trivial.cycles == 2
            else f"the median of the {trivial.cycles - 1} runs after it"
        )
        + " in the same process, each with a new app.",
        "",
    ]
    if quick:
        lines += [
            "Quick mode: sleeps of 20 ms instead of 200 ms (2 ms instead of 20 ms "
            "in the chain), 100 trivial dependencies instead of 1,000, every shape "
            "of one mode measured in one process, one round; no goal is judged.",
            "",
        ]
    lines += [
        *startup_modes.table(),
        "",
        "Goals (issue 12), with the switch on:",
        "",
        "| shape | goal | measured | met? |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        "| " + " | ".join(row) + " |"
        for row in startup_modes.goals(output / "instructions.md", quick=quick)
    ]
    lines += [
        "",
        "The per-request row is read from `instructions.md` (written by "
        "`python scripts/benchmark.py --instructions`) when this table was made: "
        "valgrind's callgrind, which counts instructions whatever else the machine "
        "does.",
        "",
    ]
    return lines


def plot(
    path: Path,
    no_regression: dict[str, dict[str, list[float]]],
    today: dict[str, list[float]],
    startup_modes: StartupModes,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ((left, right), (set_up, tear_down)) = plt.subplots(
        2, 2, figsize=(13, 8), layout="constrained"
    )
    metric = no_regression["per_request_us"]
    left.bar(["upstream", "fork"], [median(metric["upstream"]), median(metric["fork"])])
    left.set_title("App without the scope: µs per request")
    labels = [TODAY_LABELS[kind] for kind in TODAY]
    right.barh(labels, [median(today[kind]) for kind in TODAY])
    right.set_title("Shared resource, on the fork:\nµs per request")
    right.invert_yaxis()
    labels = [
        shape.label.replace(" dependencies", "") for shape in startup_modes.shapes
    ]
    for axes, phase_metric, phase in (
        (set_up, "startup_ms", "Startup"),
        (tear_down, "shutdown_ms", "Teardown"),
    ):
        height = 0.4
        smallest, largest = math.inf, 0.0
        for offset, mode in ((-height / 2, "sequential"), (height / 2, "concurrent")):
            values = [
                startup_modes.median(shape.name, mode, phase_metric)
                for shape in startup_modes.shapes
            ]
            smallest, largest = min(smallest, *values), max(largest, *values)
            bars = axes.barh(
                [index + offset for index in range(len(labels))],
                values,
                height,
                label=mode,
            )
            axes.bar_label(
                bars, labels=[ms(value) for value in values], fontsize=8, padding=2
            )
        axes.set_yticks(range(len(labels)), labels, fontsize=8)
        axes.set_xscale("log")
        axes.set_xlim(smallest / 3, largest * 3)
        axes.set_xlabel("ms (log scale)")
        axes.set_title(
            f"{phase} of the lifespan dependencies:\nsequential vs concurrent"
        )
        axes.invert_yaxis()
        axes.legend(fontsize=8, loc="lower right")
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
