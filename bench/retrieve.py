"""Retrieval benchmark: one study retrieved whole by each client, over and over.

    python bench/retrieve.py [--series 2] [--per-series 100] [--size 512] [--runs 3]
                             [--clients move,get,wado] [--associations 2] [--read-ahead 2]
                             [--wado-prefetch 16]
                             [--json out.json]

Starts its own suite (``DevSuite``: every service and a SeaweedFS S3 server on private ports,
as ``make run`` does), stores a study of ``series * per_series`` CT instances of ``size`` x
``size`` 16-bit pixels (512: 0.5 MB each) with DCMTK's ``storescu``, waits for the catalog, then
runs each client ``--runs`` times:

- ``move``: DCMTK ``movescu`` (Study Root, STUDY level) to a DCMTK ``storescp`` the benchmark
  runs and registers as the move destination (files written to a temporary directory);
- ``get``: DCMTK ``getscu`` (Study Root, STUDY level), files written to a temporary directory;
- ``wado``: WADO-RS study retrieval as stored over the listener's HTTP port, each multipart part
  written to a file as it arrives (``bench/retrieve_wado.py`` has more on WADO-RS alone: a curl
  client and the S3 server's own ceiling).

Reports per run: MB/s and instances/s from the start of the client to its exit, the client's CPU
seconds (is the client the limit?), and the peak RSS of the listener and the retrieval service
(each with its children) sampled every 50 ms. A client is a function in ``CLIENTS``: add one by
writing it and naming it there. Exit status 1 if a run did not deliver every instance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generate import generate_ct_study  # noqa: E402
from bench.ingest import RssSampler, catalog_count, machine  # noqa: E402
from edge.cli.devsuite import DevSuite, dcmtk, dcmtk_env  # noqa: E402
from edge.common.netutil import free_ports  # noqa: E402
from edge.listener.multipart import boundary_of, parse_media_type, read_parts  # noqa: E402

CALLING_AE = "BENCH"
DESTINATION = "BENCHSCP"
MB = 1_000_000


@dataclass
class Context:
    """What a client needs: the suite, the study, where to put what it receives."""

    suite: DevSuite
    study_uid: str
    out_dir: Path
    dest_port: int


# A client retrieves the study once into ``out_dir``; it returns when the retrieval is over.
Client = Callable[[Context], None]


def _run(args: list[str]) -> None:
    result = subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} failed: {result.stderr[-2000:]}")


def move_client(ctx: Context) -> None:
    """DCMTK movescu: the study to the benchmark's storescp (BENCHSCP)."""
    _run(
        [
            dcmtk("movescu"),
            "-S",
            "-aet",
            CALLING_AE,
            "-aec",
            ctx.suite.ae_title,
            "-aem",
            DESTINATION,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={ctx.study_uid}",
            "127.0.0.1",
            str(ctx.suite.dicom_port),
        ]
    )


def get_client(ctx: Context) -> None:
    """DCMTK getscu: the study over its own association, written to ``out_dir``."""
    _run(
        [
            dcmtk("getscu"),
            "-S",
            "-aet",
            CALLING_AE,
            "-aec",
            ctx.suite.ae_title,
            "-od",
            str(ctx.out_dir),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={ctx.study_uid}",
            "127.0.0.1",
            str(ctx.suite.dicom_port),
        ]
    )


def wado_client(ctx: Context) -> None:
    """WADO-RS: ``GET /dicom-web/studies/{study}`` as stored (``transfer-syntax=*``), the
    multipart body read as a stream and each part written to ``out_dir`` as it completes."""
    url = f"http://127.0.0.1:{ctx.suite.http_port}/dicom-web/studies/{ctx.study_uid}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    # httpx's blocking client: its async one (an anyio stream and a cancel scope per 64 KiB
    # read) took half as much CPU again per study, on cores the client shares with the suite.
    with (
        httpx.Client(timeout=300) as http,
        http.stream(
            "GET", url, headers={"accept": accept, **ctx.suite.auth_headers("radiologist")}
        ) as response,
    ):
        response.raise_for_status()
        _, params = parse_media_type(response.headers["content-type"])
        # Each read as it comes: a chunk size would join the reads into new buffers.
        asyncio.run(_save_parts(response.iter_raw(), boundary_of(params), ctx.out_dir))


async def _save_parts(chunks: Iterator[bytes], boundary: bytes, out_dir: Path) -> None:
    """Each part of the body in ``chunks`` to a file of ``out_dir`` (the listener's own
    multipart reader, which takes an async iterator: the reads block, there is nothing else
    to do while they wait)."""

    async def pieces() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    number = 0
    async for part in read_parts(pieces(), boundary, spool_dir=str(out_dir)):
        number += 1
        os.replace(part.path, out_dir / f"{number:05d}.dcm")


CLIENTS: dict[str, Client] = {"move": move_client, "get": get_client, "wado": wado_client}


def store(suite: DevSuite, files: list[Path]) -> None:
    _run(
        [
            dcmtk("storescu"),
            "-aet",
            CALLING_AE,
            "-aec",
            suite.ae_title,
            "-nh",
            "127.0.0.1",
            str(suite.dicom_port),
            *map(str, files),
        ]
    )
    deadline = time.monotonic() + 120
    while catalog_count(suite.database_url) < len(files):
        if time.monotonic() > deadline:
            raise RuntimeError("the catalog never held every instance")
        time.sleep(0.1)


def service_process(suite: DevSuite, service: str) -> psutil.Process:
    assert suite.process is not None
    for child in psutil.Process(suite.process.pid).children(recursive=True):
        try:
            if f"edge.{service}" in child.cmdline():
                return child
        except psutil.Error:
            continue
    raise RuntimeError(f"no {service} process")


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"storescp not listening on {port}")


def _cpu_seconds() -> float:
    """CPU time of this process (an in-process client) and of its waited-for children (a
    DCMTK client)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(client: Client, ctx: Context, expected: int, total_bytes: int) -> dict[str, float]:
    shutil.rmtree(ctx.out_dir, ignore_errors=True)
    ctx.out_dir.mkdir(parents=True)
    processes = {s: service_process(ctx.suite, s) for s in ("listener", "retrieval")}
    sampler = RssSampler(processes, interval=0.05)
    sampler.start()
    before = _cpu_seconds()
    started = time.perf_counter()
    client(ctx)
    elapsed = time.perf_counter() - started
    peak = sampler.stop()
    client_cpu = _cpu_seconds() - before - sampler.cpu_seconds
    received = sum(1 for p in ctx.out_dir.rglob("*") if p.is_file())
    return {
        "instances": received,
        "complete": float(received == expected),
        "seconds": elapsed,
        "mb_s": total_bytes / MB / elapsed,
        "instances_s": expected / elapsed,
        "client_cpu_s": client_cpu,
        "listener_rss_mb": peak["listener"] / 2**20,
        "retrieval_rss_mb": peak["retrieval"] / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--per-series", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--associations", type=int, default=None, help="EDGE_MOVE_ASSOCIATIONS")
    parser.add_argument("--read-ahead", type=int, default=None, help="EDGE_MOVE_READ_AHEAD")
    parser.add_argument("--wado-prefetch", type=int, default=None, help="EDGE_WADO_PREFETCH")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = set(clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown client(s): {', '.join(sorted(unknown))}")

    count = args.series * args.per_series
    extra = {}
    if args.associations is not None:
        extra["EDGE_MOVE_ASSOCIATIONS"] = str(args.associations)
    if args.read_ahead is not None:
        extra["EDGE_MOVE_READ_AHEAD"] = str(args.read_ahead)
    if args.wado_prefetch is not None:
        extra["EDGE_WADO_PREFETCH"] = str(args.wado_prefetch)
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="edge-bench-retrieve-") as tmp:
        work = Path(tmp)
        files = generate_ct_study(
            work / "study",
            series=args.series,
            per_series=args.per_series,
            rows=args.size,
            cols=args.size,
        )
        total_bytes = sum(p.stat().st_size for p in files)
        from pydicom import dcmread

        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        (dest_port,) = free_ports(1)
        dest_dir = work / "received"
        dest_dir.mkdir()
        with DevSuite(work / "suite", extra_env=extra) as suite:
            suite.edge(
                "ae", "add", CALLING_AE, "--host", "127.0.0.1", "--port", "11140",
                "--allow", "echo,store,move,get",
            )  # fmt: skip
            suite.edge(
                "ae", "add", DESTINATION, "--host", "127.0.0.1", "--port", str(dest_port),
                "--allow", "store",
            )  # fmt: skip
            store(suite, files)
            # The WADO-RS client's user and token made now, not in its first timed run (the
            # password hashed here and checked by auth took ~1 s of a run).
            suite.token("radiologist")
            storescp = subprocess.Popen(
                [dcmtk("storescp"), "-aet", DESTINATION, "-od", str(dest_dir), str(dest_port)],
                env=dcmtk_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _wait_port(dest_port)
                for name in clients:
                    out = dest_dir if name == "move" else work / f"out-{name}"
                    ctx = Context(suite, study_uid, out, dest_port)
                    results[name] = [
                        measure(CLIENTS[name], ctx, count, total_bytes) for _ in range(args.runs)
                    ]
            finally:
                storescp.terminate()
                storescp.wait(10)

    each = total_bytes / count / MB
    print(f"study: {count} instances, {total_bytes / MB:.1f} MB ({each:.2f} MB each)")
    header = ("client", "run", "MB/s", "inst/s", "s", "client CPU s", "listener MB", "retrieval MB")
    print("{:<8} {:>3} {:>8} {:>8} {:>7} {:>12} {:>12} {:>13}".format(*header))
    ok = True
    for name, runs in results.items():
        for n, r in enumerate(runs, start=1):
            ok = ok and bool(r["complete"])
            print(
                f"{name:<8} {n:>3} {r['mb_s']:>8.1f} {r['instances_s']:>8.1f} {r['seconds']:>7.2f}"
                f" {r['client_cpu_s']:>12.2f}"
                f" {r['listener_rss_mb']:>12.0f} {r['retrieval_rss_mb']:>13.0f}"
                + ("" if r["complete"] else f"  INCOMPLETE ({int(r['instances'])})")
            )
        print(f"{name:<8} med {statistics.median(r['mb_s'] for r in runs):>8.1f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "args": vars(args) | {"json": str(args.json)},
                    "results": results,
                },
                indent=2,
            )  # fmt: skip
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
