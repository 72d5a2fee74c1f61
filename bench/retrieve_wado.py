"""WADO-RS retrieval benchmark: one study fetched whole over the listener's DICOMweb port.

    python bench/retrieve_wado.py [--series 2] [--per-series 100] [--size 512] [--runs 3]
                                  [--prefetch N] [--client python|curl] [--json out.json]

Starts its own suite (``DevSuite``: every service and a SeaweedFS S3 server on private ports,
as ``make run`` does), stores a study of ``series * per_series`` CT instances of ``size`` x
``size`` 16-bit pixels (512: 0.5 MB each) with DCMTK's ``storescu``, waits for the catalog,
then retrieves the study ``--runs`` times with ``GET /dicom-web/studies/{uid}`` and
``Accept: multipart/related; type="application/dicom"; transfer-syntax=*`` (as stored), read as
a stream by one client (``--client python``: httpx, parts counted; ``curl``: the body
discarded by curl, so the client costs next to nothing). Before the runs, the S3 server alone
is timed (every object read by 4 threads): the ceiling on this machine.

Reports per run: MB/s and instances/s from the request to the last byte, time to the first
byte, and the listener's peak RSS (with its children) sampled every 50 ms, plus its RSS before
the first run. Exit status 1 if a run did not return every instance. ``bench/retrieve.py
--clients wado`` runs WADO-RS beside C-MOVE and C-GET in one table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from pydicom import dcmread

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generate import generate_ct_study  # noqa: E402
from bench.ingest import RssSampler, machine  # noqa: E402
from bench.retrieve import service_process, store  # noqa: E402
from edge.cli.devsuite import DevSuite  # noqa: E402
from edge.common.settings import DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY  # noqa: E402
from edge.common.store import MinioObjectStore  # noqa: E402

CALLING_AE = "BENCH"
MB = 1_000_000
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def retrieve(url: str, token: str) -> dict[str, float]:
    """One streamed retrieval: bytes, parts, seconds to first byte and to the end."""
    started = time.perf_counter()
    first_byte = None
    total = 0
    parts = 0
    tail = b""
    headers = {"accept": AS_STORED, "authorization": f"Bearer {token}"}
    with httpx.stream("GET", url, headers=headers, timeout=300) as response:
        response.raise_for_status()
        boundary = b"--" + response.headers["content-type"].split("boundary=")[1].encode()
        for chunk in response.iter_raw(1 << 20):
            if first_byte is None:
                first_byte = time.perf_counter() - started
            total += len(chunk)
            # A boundary wholly inside the chunk, or across the previous chunk's end.
            parts += chunk.count(boundary) + (tail + chunk[: len(boundary) - 1]).count(boundary)
            tail = chunk[-(len(boundary) - 1) :]
    elapsed = time.perf_counter() - started
    return {
        "bytes": total,
        "parts": parts - 1,  # the close delimiter also starts with the boundary
        "seconds": elapsed,
        "first_byte_s": first_byte or elapsed,
    }


def retrieve_curl(url: str, token: str, instances: int) -> dict[str, float]:
    """The same request with curl (C, discarding the body): what the listener delivers when the
    client costs next to nothing. The body's parts are not counted; the size is checked."""
    out = subprocess.run(
        [
            "curl", "-sS", "-o", "/dev/null", "-H", f"Accept: {AS_STORED}",
            "-H", f"Authorization: Bearer {token}",
            "-w", "%{http_code} %{size_download} %{time_starttransfer} %{time_total}", url,
        ],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout.split()  # fmt: skip
    if out[0] != "200":
        raise RuntimeError(f"curl got HTTP {out[0]}")
    return {
        "bytes": int(out[1]),
        "parts": instances,
        "seconds": float(out[3]),
        "first_byte_s": float(out[2]),
    }


def s3_baseline(suite: DevSuite, threads: int) -> dict[str, float]:
    """The object store alone: every object of the bucket read whole by ``threads`` readers
    (what the listener's fetches cost without HTTP, multipart and the client)."""
    store = MinioObjectStore(suite.s3_endpoint, DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY, suite.bucket)
    objects = list(store.list("studies/"))
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda o: len(store.get_range(o.key, 0, o.size)), objects))
    elapsed = time.perf_counter() - started
    return {"threads": threads, "mb_s": total / MB / elapsed, "objects_s": len(objects) / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--per-series", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prefetch", type=int, default=None, help="EDGE_WADO_PREFETCH")
    parser.add_argument(
        "--client", choices=("python", "curl"), default="python",
        help="python: httpx, streamed, parts counted; curl: the body discarded by curl",
    )  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    count = args.series * args.per_series
    with tempfile.TemporaryDirectory(prefix="edge-bench-wado-") as tmp:
        work = Path(tmp)
        files = generate_ct_study(
            work / "study",
            series=args.series,
            per_series=args.per_series,
            rows=args.size,
            cols=args.size,
        )
        study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        study_bytes = sum(p.stat().st_size for p in files)
        env = {} if args.prefetch is None else {"EDGE_WADO_PREFETCH": str(args.prefetch)}
        suite = DevSuite(work / "suite", extra_env=env)
        suite.start()
        try:
            suite.edge(
                "ae", "add", CALLING_AE, "--host", "127.0.0.1", "--port", "11119",
                "--allow", "echo,store",
            )  # fmt: skip
            store(suite, files)
            listener = service_process(suite, "listener")
            idle_rss = RssSampler.rss(listener)
            url = f"http://127.0.0.1:{suite.http_port}/dicom-web/studies/{study}"
            baseline = s3_baseline(suite, 4)
            runs = []
            for _ in range(args.runs):
                sampler = RssSampler({"listener": listener}, interval=0.05)
                sampler.start()
                token = suite.token("radiologist")  # renewed by the suite when near expiry
                if args.client == "python":
                    run = retrieve(url, token)
                else:
                    run = retrieve_curl(url, token, count)
                run["peak_rss_mb"] = sampler.stop()["listener"] / MB
                run["mb_s"] = run["bytes"] / MB / run["seconds"]
                run["instances_s"] = run["parts"] / run["seconds"]
                runs.append(run)
        finally:
            suite.stop()

    ok = all(r["parts"] == count and r["bytes"] > study_bytes for r in runs)
    result = {
        "machine": machine(),
        "client": args.client,
        "instances": count,
        "instance_bytes": study_bytes // count,
        "study_mb": study_bytes / MB,
        "listener_idle_rss_mb": idle_rss / MB,
        "runs": runs,
        "median_mb_s": statistics.median(r["mb_s"] for r in runs),
        "median_instances_s": statistics.median(r["instances_s"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "s3_baseline": baseline,
        "complete": ok,
    }
    print(
        f"WADO-RS study of {count} x {study_bytes / count / MB:.2f} MB "
        f"({study_bytes / MB:.0f} MB), {args.client} client,"
        f" listener idle RSS {idle_rss / MB:.0f} MB"
    )
    print(
        f"S3 alone ({baseline['threads']} readers, no HTTP): {baseline['mb_s']:.0f} MB/s,"
        f" {baseline['objects_s']:.0f} objects/s"
    )
    print(f"{'run':>4} {'MB/s':>8} {'inst/s':>8} {'first byte':>11} {'total':>8} {'peak RSS':>9}")
    for n, r in enumerate(runs, 1):
        print(
            f"{n:>4} {r['mb_s']:>8.1f} {r['instances_s']:>8.1f} {r['first_byte_s'] * 1000:>9.0f}ms"
            f" {r['seconds']:>7.2f}s {r['peak_rss_mb']:>7.0f}MB"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not ok:
        print("FAILED: a run did not return every instance", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
