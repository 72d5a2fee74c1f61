"""Ingest benchmark: DCMTK ``storescu`` into the suite, over 1 and N parallel associations.

    python bench/ingest.py [--count 2000] [--small-count 2000] [--associations 1,4] [--big]
                           [--json out.json] [--endpoint host:port [--database-url URL]
                           [--metrics-url URL]]

Without ``--endpoint`` it starts its own suite (``DevSuite``: listener, ingestion, storage, auth
and a SeaweedFS S3 server on private ports, as ``make run`` does) in a temporary directory and
registers the calling AE. For every data set (512x512 and 64x64 16-bit CT) and association count
it generates fresh instances (new UIDs, so the catalog really grows), sends them with N
``storescu`` processes at once, and reports:

- instances/s and MB/s, from the first association request to the last C-STORE response;
- client-side C-STORE latency (``storescu -v`` lines timestamped as they arrive: from "Sending
  Store Request" to "Received Store Response", so it includes the transfer of the data set);
- server-side handling time (the listener's ``edge_cstore_seconds`` histogram, bucket deltas,
  interpolated as Prometheus' ``histogram_quantile`` does);
- catalog lag: from the last C-STORE response until ``count(*) FROM instance`` holds every
  instance (polled every 50 ms);
- peak RSS of the listener and of ingestion (each with its children), sampled every 100 ms;
- announcement latency: from the last C-STORE response to the study's ``study.arrived`` as a
  subscriber receives it, minus the quiet period ``EDGE_STABLE_AFTER`` (the suite it starts
  uses 2 s unless ``--suite-env EDGE_STABLE_AFTER=...`` says otherwise);
- relay throughput: ``--relay-events`` events queued in the outbox at once, timed until a
  subscriber has received them all (bench/events.py).

``--big`` also sends one 300 MB instance and compares the listener's RSS before and during.
Exit status 1 if a C-STORE failed or the catalog is short.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import psycopg
from pydicom import dcmread
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.events import EventWatcher, relay_throughput  # noqa: E402
from bench.generate import generate_big_instance, generate_ct_study  # noqa: E402
from edge.cli.devsuite import DevSuite, dcmtk, dcmtk_env  # noqa: E402

CALLING_AE = "BENCH"
STABLE_AFTER = 2.0  # the quiet period of the suite the benchmark starts
MB = 1_000_000
SENDING = re.compile(r"Sending Store Request")
RECEIVED = re.compile(r"Received Store Response \(([^)]*)\)")


# -- data ---------------------------------------------------------------------------------------


def make_instances(out_dir: Path, count: int, size: int, seed: int) -> list[Path]:
    """``count`` fresh CT instances of ``size``x``size`` in one study, series of 100."""
    paths: list[Path] = []
    study_uid = generate_uid()
    series, rest = divmod(count, 100)
    if series:
        paths += generate_ct_study(
            out_dir / "a",
            study_uid=study_uid,
            series=series,
            per_series=100,
            rows=size,
            cols=size,
            seed=seed,
        )
    if rest:
        paths += generate_ct_study(
            out_dir / "b",
            study_uid=study_uid,
            series=1,
            per_series=rest,
            rows=size,
            cols=size,
            seed=seed + 1,
        )
    return paths


# -- measurements -------------------------------------------------------------------------------


class RssSampler(threading.Thread):
    """Peak RSS of each named process (with its children) every ``interval`` seconds.

    The children are listed again once a second only: listing them walks every process of
    the machine (~3 ms here), which every 50 ms took a tenth of a core, and the GIL, from an
    in-process client being measured. ``cpu_seconds`` is this thread's own CPU time, so a
    benchmark can leave it out of its client's."""

    RELIST = 1.0  # seconds between listings of the children

    def __init__(self, processes: dict[str, psutil.Process], interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.processes = processes
        self.interval = interval
        self.peak: dict[str, int] = {name: 0 for name in processes}
        self.first: dict[str, int] = {}
        self.cpu_seconds = 0.0
        self._halt = threading.Event()

    @staticmethod
    def rss(process: psutil.Process) -> int:
        try:
            return RssSampler._sum([process, *process.children(recursive=True)])
        except psutil.Error:
            return 0

    @staticmethod
    def _sum(processes: list[psutil.Process]) -> int:
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _family(self, process: psutil.Process) -> list[psutil.Process]:
        try:
            return [process, *process.children(recursive=True)]
        except psutil.Error:
            return [process]

    def run(self) -> None:
        families: dict[str, list[psutil.Process]] = {}
        listed = -self.RELIST
        while not self._halt.is_set():
            if time.monotonic() - listed >= self.RELIST:
                families = {name: self._family(p) for name, p in self.processes.items()}
                listed = time.monotonic()
            for name, family in families.items():
                value = self._sum(family)
                self.first.setdefault(name, value)
                self.peak[name] = max(self.peak[name], value)
            self.cpu_seconds = time.thread_time()
            self._halt.wait(self.interval)

    def stop(self) -> dict[str, int]:
        self._halt.set()
        self.join()
        return self.peak


class CatalogWatcher(threading.Thread):
    """Polls ``count(*) FROM instance`` every 50 ms; notes when it first reaches ``target``."""

    def __init__(self, database_url: str, target: int, timeout: float) -> None:
        super().__init__(daemon=True)
        self.database_url = database_url
        self.target = target
        self.timeout = timeout
        self.reached_at: float | None = None
        self.last_count = 0
        self._halt = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while not self._halt.is_set():
                row = conn.execute("SELECT count(*) FROM instance").fetchone()
                self.last_count = int(row[0]) if row else 0
                if self.last_count >= self.target:
                    self.reached_at = time.monotonic()
                    return
                self._halt.wait(0.05)

    def wait_done(self, since: float) -> None:
        """Wait until the target is reached or ``timeout`` seconds after ``since``."""
        self.join(max(0.0, since + self.timeout - time.monotonic()))
        self._halt.set()
        self.join()


def catalog_count(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM instance").fetchone()
        return int(row[0]) if row else 0


def scrape_histogram(
    metrics_url: str, name: str = "edge_cstore_seconds", status: str = "0x0000"
) -> tuple[list[tuple[float, float]], float]:
    """``([(le, cumulative count), ...], sum)`` of one Prometheus histogram, successful
    C-STOREs only (the series labelled ``status``)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    buckets: list[tuple[float, float]] = []
    total = 0.0
    label = f'status="{status}"'
    for line in text.splitlines():
        if label not in line:
            continue
        if line.startswith(f"{name}_bucket{{"):
            le = re.search(r'le="([^"]+)"', line)
            if le:
                buckets.append((float(le.group(1)), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(f"{name}_sum"):
            total = float(line.rsplit(" ", 1)[1])
    buckets.sort()
    return buckets, total


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` on cumulative buckets: linear within the bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # beyond the last finite bucket: its bound is all we know
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


# -- sending ------------------------------------------------------------------------------------


@dataclass
class Association:
    """One ``storescu`` process and what its verbose log told us, timestamped on arrival."""

    files: list[Path]
    process: subprocess.Popen[str] | None = None
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    last_response: float = 0.0
    tail: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        sent_at: float | None = None
        for line in self.process.stdout:
            now = time.monotonic()
            if SENDING.search(line):
                sent_at = now
            elif m := RECEIVED.search(line):
                status = m.group(1)
                self.statuses[status] = self.statuses.get(status, 0) + 1
                self.last_response = now
                if sent_at is not None:
                    self.latencies.append(now - sent_at)
                    sent_at = None
            self.tail = (self.tail + [line.rstrip()])[-20:]


def storescu_command(
    host: str, port: int, called_ae: str, pdu: int, files: list[Path]
) -> list[str]:
    # -R: propose only the SOP classes of the files; default TS proposal puts explicit VR little
    # endian (the files' own) first, so nothing is converted. -v: one line per request/response.
    return [
        dcmtk("storescu"),
        "-v",
        "-R",
        "-aet",
        CALLING_AE,
        "-aec",
        called_ae,
        "-pdu",
        str(pdu),
        host,
        str(port),
        *map(str, files),
    ]


@dataclass
class RunResult:
    name: str
    instances: int
    associations: int
    bytes: int
    seconds: float
    instances_per_s: float
    mb_per_s: float
    client_p50_ms: float | None
    client_p99_ms: float | None
    server_p50_ms: float | None
    server_p99_ms: float | None
    server_mean_ms: float | None
    catalog_lag_s: float | None
    catalog_complete: bool | None
    listener_peak_rss_mb: float | None
    ingestion_peak_rss_mb: float | None
    failures: int
    exit_codes: list[int]
    statuses: dict[str, int]
    announce_latency_s: float | None = None


@dataclass
class Target:
    host: str
    port: int
    called_ae: str
    metrics_url: str | None
    database_url: str | None
    processes: dict[str, psutil.Process]
    events: EventWatcher | None = None
    stable_after: float = 60.0


def send(
    target: Target,
    name: str,
    files: list[Path],
    associations: int,
    pdu: int,
    catalog_timeout: float,
) -> RunResult:
    chunks = [files[i::associations] for i in range(associations)]
    size = sum(p.stat().st_size for p in files)
    before_hist = scrape_histogram(target.metrics_url) if target.metrics_url else None
    watcher = None
    if target.database_url:
        watcher = CatalogWatcher(
            target.database_url, catalog_count(target.database_url) + len(files), catalog_timeout
        )
    sampler = RssSampler(target.processes)
    sampler.start()
    if watcher:
        watcher.start()
    started = time.monotonic()
    runs = [Association(chunk) for chunk in chunks if chunk]
    for run in runs:
        run.process = subprocess.Popen(
            storescu_command(target.host, target.port, target.called_ae, pdu, run.files),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dcmtk_env(),
        )
        run.reader = threading.Thread(target=run.read, daemon=True)
        run.reader.start()
    codes = []
    for run in runs:
        assert run.process is not None and run.reader is not None
        codes.append(run.process.wait())
        run.reader.join()
    last_response = (
        max((r.last_response for r in runs), default=time.monotonic()) or time.monotonic()
    )
    lag = complete = None
    if watcher:
        watcher.wait_done(last_response)
        complete = watcher.reached_at is not None
        lag = max(0.0, watcher.reached_at - last_response) if watcher.reached_at else None
    announce = None
    if target.events is not None:
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        arrived = target.events.wait_study_arrived(study_uid, target.stable_after + 60)
        if arrived is not None:
            announce = arrived - last_response - target.stable_after
    peaks = sampler.stop()
    seconds = last_response - started

    server = (None, None, None)
    if target.metrics_url and before_hist:
        after_hist = scrape_histogram(target.metrics_url)
        before = dict(before_hist[0])
        delta = [(le, count - before.get(le, 0.0)) for le, count in after_hist[0]]
        n = delta[-1][1] if delta else 0
        p50, p99 = histogram_quantile(0.5, delta), histogram_quantile(0.99, delta)
        mean = (after_hist[1] - before_hist[1]) / n if n else None
        server = tuple(None if v is None else v * 1000 for v in (p50, p99, mean))  # type: ignore[assignment]

    latencies = [x for r in runs for x in r.latencies]
    statuses: dict[str, int] = {}
    for r in runs:
        for status, n in r.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    succeeded = statuses.get("Success", 0)
    failures = len(files) - succeeded
    for r, code in zip(runs, codes, strict=True):
        if code != 0 or failures:
            print(
                f"  storescu exit {code}; last lines:\n    " + "\n    ".join(r.tail[-8:]),
                file=sys.stderr,
            )
            break
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return RunResult(
        name=name,
        instances=len(files),
        associations=associations,
        bytes=size,
        seconds=round(seconds, 3),
        instances_per_s=round(len(files) / seconds, 1) if seconds > 0 else 0.0,
        mb_per_s=round(size / MB / seconds, 1) if seconds > 0 else 0.0,
        client_p50_ms=None if p50 is None else round(p50 * 1000, 1),
        client_p99_ms=None if p99 is None else round(p99 * 1000, 1),
        server_p50_ms=None if server[0] is None else round(server[0], 1),
        server_p99_ms=None if server[1] is None else round(server[1], 1),
        server_mean_ms=None if server[2] is None else round(server[2], 1),
        catalog_lag_s=None if lag is None else round(lag, 3),
        catalog_complete=complete,
        listener_peak_rss_mb=round(peaks["listener"] / 2**20, 1) if "listener" in peaks else None,
        ingestion_peak_rss_mb=round(peaks["ingestion"] / 2**20, 1)
        if "ingestion" in peaks
        else None,
        failures=failures,
        exit_codes=codes,
        statuses=statuses,
        announce_latency_s=None if announce is None else round(announce, 3),
    )


def big_run(target: Target, path: Path, pdu: int, catalog_timeout: float) -> dict[str, object]:
    """One huge instance: listener RSS at rest just before, and its peak while sending."""
    listener = target.processes.get("listener")
    baseline = RssSampler.rss(listener) if listener else None
    name = f"big-{path.stat().st_size / MB:.0f}MB"
    result = send(target, name, [path], 1, pdu, catalog_timeout)
    after = RssSampler.rss(listener) if listener else None
    out: dict[str, object] = asdict(result)
    out.update(
        listener_rss_before_mb=None if baseline is None else round(baseline / 2**20, 1),
        listener_rss_after_mb=None if after is None else round(after / 2**20, 1),
    )
    return out


# -- reporting ----------------------------------------------------------------------------------


def fmt(value: object, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{suffix}"
    return f"{value}{suffix}"


def print_table(results: list[RunResult]) -> None:
    headers = [
        "run",
        "assoc",
        "inst",
        "MB",
        "s",
        "inst/s",
        "MB/s",
        "client p50/p99 ms",
        "server p50/p99 ms",
        "catalog lag s",
        "arrived s",
        "listener RSS MB",
        "ingestion RSS MB",
        "fail",
    ]
    rows = []
    for r in results:
        rows.append(
            [
                r.name,
                str(r.associations),
                str(r.instances),
                fmt(r.bytes / MB),
                fmt(r.seconds),
                fmt(r.instances_per_s),
                fmt(r.mb_per_s),
                f"{fmt(r.client_p50_ms)} / {fmt(r.client_p99_ms)}",
                f"{fmt(r.server_p50_ms)} / {fmt(r.server_p99_ms)}",
                (
                    "-"
                    if r.catalog_lag_s is None and r.catalog_complete is None
                    else "SHORT"
                    if not r.catalog_complete
                    else f"{r.catalog_lag_s:.2f}"
                ),
                fmt(r.announce_latency_s),
                fmt(r.listener_peak_rss_mb),
                fmt(r.ingestion_peak_rss_mb),
                str(r.failures),
            ]
        )
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def machine() -> dict[str, object]:
    debian = Path("/etc/debian_version")
    return {
        "nproc": os.cpu_count(),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        ),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "debian": debian.read_text().strip() if debian.exists() else platform.platform(),
        "python": platform.python_version(),
        "storescu": subprocess.run([dcmtk("storescu"), "--version"], capture_output=True, text=True)
        .stdout.splitlines()[0]
        .strip("$ ")
        .strip(),
    }


# -- main ---------------------------------------------------------------------------------------


def suite_processes(suite: DevSuite) -> dict[str, psutil.Process]:
    assert suite.process is not None
    found: dict[str, psutil.Process] = {}
    for child in psutil.Process(suite.process.pid).children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        for service in ("listener", "ingestion"):
            if f"edge.{service}" in cmdline and service not in found:
                found[service] = child
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000, help="512x512 instances per run [2000]")
    parser.add_argument(
        "--small-count", type=int, default=2000, help="64x64 instances per run [2000]"
    )
    parser.add_argument(
        "--associations", default="1,4", help="parallel associations, comma-separated [1,4]"
    )
    parser.add_argument("--big", action="store_true", help="also send one 300 MB instance")
    parser.add_argument("--big-rows", type=int, default=10000)
    parser.add_argument("--big-cols", type=int, default=15000)
    parser.add_argument(
        "--pdu", type=int, default=131072, help="storescu max receive PDU [131072, its max]"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--endpoint", help="host:port of a running listener (default: start a DevSuite)"
    )
    parser.add_argument("--called-ae", default="EDGE")
    parser.add_argument("--database-url", help="catalog of the running suite (with --endpoint)")
    parser.add_argument(
        "--metrics-url", help="listener /metrics of the running suite (with --endpoint)"
    )
    parser.add_argument("--catalog-timeout", type=float, default=120.0)
    parser.add_argument("--work-dir", type=Path, help="where data and the suite live [a temp dir]")
    parser.add_argument(
        "--suite-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the DevSuite, e.g. EDGE_MAX_PDU_SIZE=4194304",
    )
    parser.add_argument(
        "--amqp-url", help="broker of the running suite (with --endpoint): watch its events"
    )
    parser.add_argument(
        "--stable-after",
        type=float,
        default=STABLE_AFTER,
        help=f"EDGE_STABLE_AFTER of the suite, seconds [{STABLE_AFTER:g}; set on a DevSuite]",
    )
    parser.add_argument(
        "--relay-events",
        type=int,
        default=20000,
        help="events queued in the outbox at once to time the relay (0: skip) [20000]",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(n) for n in args.associations.split(",") if n.strip()]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="edge-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    suite: DevSuite | None = None
    target: Target | None = None
    info = machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    try:
        if args.endpoint:
            host, _, port = args.endpoint.rpartition(":")
            target = Target(
                host, int(port), args.called_ae, args.metrics_url, args.database_url, {}
            )
            if args.amqp_url:
                target.events = EventWatcher(args.amqp_url).start()
                target.stable_after = args.stable_after
            print(
                f"sending to {args.endpoint} (register AE {CALLING_AE} with store permission there)"
            )
        else:
            extra = dict(item.split("=", 1) for item in args.suite_env)
            extra.setdefault("EDGE_STABLE_AFTER", f"{args.stable_after:g}")
            suite = DevSuite(work / "suite", ae_title=args.called_ae, extra_env=extra)
            print(f"starting a DevSuite in {work / 'suite'} ...", flush=True)
            suite.start()
            suite.edge(
                "ae",
                "add",
                CALLING_AE,
                "--host",
                "127.0.0.1",
                "--port",
                "1",
                "--allow",
                "echo,store",
            )
            processes = suite_processes(suite)
            target = Target(
                "127.0.0.1",
                suite.dicom_port,
                args.called_ae,
                f"http://127.0.0.1:{suite.http_port}/metrics",
                suite.database_url,
                processes,
                EventWatcher(suite.amqp_url).start(),
                float(extra["EDGE_STABLE_AFTER"]),
            )
            print(
                f"suite up: DICOM 127.0.0.1:{suite.dicom_port}, processes "
                + ", ".join(f"{k}={p.pid}" for k, p in processes.items()),
                flush=True,
            )

        results: list[RunResult] = []
        seed = 0
        for label, count, size in (
            ("CT 512x512", args.count, 512),
            ("CT 64x64", args.small_count, 64),
        ):
            if count <= 0:
                continue
            for n in counts:
                seed += 1000
                data = work / f"data-{size}-{n}"
                t = time.monotonic()
                files = make_instances(data, count, size, seed)
                print(
                    f"{label} x{count} over {n} association(s): "
                    f"generated in {time.monotonic() - t:.0f}s, sending ...",
                    flush=True,
                )
                result = send(target, label, files, n, args.pdu, args.catalog_timeout)
                results.append(result)
                print(
                    f"  {result.instances_per_s} inst/s, {result.mb_per_s} MB/s, "
                    f"catalog lag {result.catalog_lag_s} s, failures {result.failures}",
                    flush=True,
                )
                shutil.rmtree(data, ignore_errors=True)

        big: dict[str, object] | None = None
        if args.big:
            try:
                path = generate_big_instance(
                    work / "big" / "big.dcm", rows=args.big_rows, cols=args.big_cols
                )
                print(f"big instance: {path.stat().st_size / MB:.0f} MB, sending ...", flush=True)
                big = big_run(target, path, args.pdu, args.catalog_timeout)
            except Exception as exc:  # keep the figures of the runs above
                print(f"big run failed: {exc!r}", file=sys.stderr)
                big = {"failures": 1, "error": repr(exc)}
            shutil.rmtree(work / "big", ignore_errors=True)

        relay = None
        if args.relay_events > 0 and target.events is not None and target.database_url:
            print(f"relay: {args.relay_events} events queued in the outbox ...", flush=True)
            relay = relay_throughput(target.database_url, target.events.amqp_url, args.relay_events)

        print()
        if results:
            print_table(results)
            print(
                f"arrived s: last C-STORE response to study.arrived at a subscriber, minus "
                f"EDGE_STABLE_AFTER={target.stable_after:g} s"
            )
        if relay is not None:
            print(
                f"relay: {relay['events']} events in {relay['seconds']} s = "
                f"{relay['events_per_s']} events/s (outbox to subscriber)"
            )
        if big is not None and "error" not in big:
            print(
                f"\nbig instance ({big['bytes'] / MB:.0f} MB): {big['seconds']} s, "
                f"{big['mb_per_s']} MB/s, failures {big['failures']}, "
                f"catalog lag {big['catalog_lag_s']} s; "
                f"listener RSS before {big['listener_rss_before_mb']} MB, peak during "
                f"{big['listener_peak_rss_mb']} MB, after {big['listener_rss_after_mb']} MB"
            )
        listener_pdu = (
            suite.env.get("EDGE_MAX_PDU_SIZE", "default (1 MiB)")
            if suite
            else "of the running suite"
        )
        print(f"\nstorescu -pdu {args.pdu}; listener EDGE_MAX_PDU_SIZE {listener_pdu}")

        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": info,
                        "command": " ".join(
                            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
                        ),
                        "pdu": args.pdu,
                        "suite_env": args.suite_env,
                        "runs": [asdict(r) for r in results],
                        "big": big,
                        "relay": relay,
                    },
                    indent=2,
                )
            )
        failed = any(
            r.failures or any(r.exit_codes) or r.catalog_complete is False for r in results
        )
        if big is not None:
            failed = failed or bool(big["failures"]) or big["catalog_complete"] is False
        return 1 if failed else 0
    finally:
        if target is not None and target.events is not None:
            target.events.stop()
        if suite is not None:
            suite.stop()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
