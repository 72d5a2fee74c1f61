"""Query benchmark: p50/p95 latency of a query mix over the engine, C-FIND and QIDO-RS.

    python bench/find.py [--studies 100000] [--reps 50] [--big-reps 20] [--reuse]
                         [--clients engine,cfind,qido] [--json out.json] [--explain out.txt]

The catalog is loaded once by ``bench/catalog_load.py`` (ingestion's upsert path) into its own
database and kept (``--reuse``). The mix (Study Root; the return keys are PS3.18's defaults for
each level, as QIDO-RS asks for them):

exact PatientID; PatientName ``SMI*`` and ``*MIT*``; StudyDate over a month; ModalitiesInStudy
MR; AccessionNumber; every study with a limit of 100; the series of a study; the instances of a
series; and the 2,000-study answer (a StudyDate range holding ~2,000 studies).

Values vary between repetitions (50 patients, accessions, months, studies, series, sampled from
the catalog with a fixed seed); the name, modality and "all" queries have one value each.

Clients, each measured on its own, one request at a time:

- ``engine``: the query service's own handler (``QueryHandler``, its pool settings) called in
  this process page by page as the listener calls it over RPC for a C-FIND (a page of 100, then
  pages of 1,000, up to the result cap; the identifiers encoded): server time without the
  broker. EXPLAIN (ANALYZE, BUFFERS) of each query's first page.
- ``cfind``: pynetdicom C-FIND over one association to a suite (``DevSuite``) whose database is
  the loaded one. Client time from the request to the final response; server time from the
  listener's ``edge_cfind_seconds`` histogram (bucket deltas, interpolated as Prometheus'
  ``histogram_quantile`` does, and the exact mean from its sum) and the query service's
  ``edge_query_find_seconds`` (mean per C-FIND, all pages). "Limit 100" is a C-CANCEL after
  the 100th pending response.
- ``qido``: ``GET /dicom-web/...`` on the listener with httpx (one keep-alive connection);
  server time from ``edge_qido_seconds``. "Limit 100" is ``limit=100``.

The mix runs with the default result cap (EDGE_FIND_MAX_RESULTS, 1000); the 2,000-study answer
on a second suite whose cap is raised to 10,000.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql
from pydicom.datadict import dictionary_VR, tag_for_keyword

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.catalog_load import DEFAULT_URL, ensure_loaded  # noqa: E402
from bench.ingest import histogram_quantile, machine, percentile  # noqa: E402

CALLING_AE = "BENCHFIND"
PAGE = 100  # what the listener asks of query.find first (find_scp.PAGE) ...
NEXT_PAGES = 1000  # ... and then at a time (find_scp.NEXT_PAGES)
DEFAULT_CAP = 1000
BIG_CAP = 10_000
BIG_ANSWER = 2000
WARM_UP = 3  # repetitions before each measured series
IMPLICIT_VR_LE = "1.2.840.10008.1.2"  # what pynetdicom's SCU proposes first, and gets

# PS3.18 Tables 10.6.3-3, -4, -5: what a QIDO-RS search returns by default, per level.
RETURN_KEYS = {
    "STUDY": (
        "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
        "ReferringPhysicianName", "TimezoneOffsetFromUTC", "PatientName", "PatientID",
        "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ),
    "SERIES": (
        "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "SeriesInstanceUID",
        "SeriesNumber", "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "RequestAttributesSequence",
    ),
    "IMAGE": (
        "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "TimezoneOffsetFromUTC",
        "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
    ),
}  # fmt: skip


# -- the mix ------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Values drawn from the loaded catalog, with a fixed seed."""

    patient_ids: list[str]
    accessions: list[str]
    months: list[tuple[date, date]]
    studies: list[str]
    series: list[tuple[str, str]]
    big_ranges: list[tuple[date, date, int]]  # StudyDate ranges of ~2,000 studies, and count


@dataclass(frozen=True)
class Query:
    name: str
    label: str
    level: str
    keys: Callable[[Samples, int], dict[str, str]]  # matching keys of repetition i
    stop_after: int | None = None  # a client-side limit
    selective: bool = False  # answers a handful of matches: the 20 ms target applies


def _da(d: date) -> str:
    return d.strftime("%Y%m%d")


def _pick(values: list[Any], i: int) -> Any:
    return values[i % len(values)]


MIX = (
    Query("patient_id", "PatientID exact", "STUDY",
          lambda s, i: {"PatientID": _pick(s.patient_ids, i)}, selective=True),
    Query("name_prefix", "PatientName SMI*", "STUDY", lambda s, i: {"PatientName": "SMI*"}),
    Query("name_infix", "PatientName *MIT*", "STUDY", lambda s, i: {"PatientName": "*MIT*"}),
    Query("date_month", "StudyDate, one month", "STUDY",
          lambda s, i: {"StudyDate": "-".join(map(_da, _pick(s.months, i)))}),
    Query("modality_mr", "ModalitiesInStudy=MR", "STUDY",
          lambda s, i: {"ModalitiesInStudy": "MR"}),
    Query("accession", "AccessionNumber", "STUDY",
          lambda s, i: {"AccessionNumber": _pick(s.accessions, i)}, selective=True),
    Query("all_limit100", "all studies, limit 100", "STUDY", lambda s, i: {}, stop_after=100),
    Query("series_of_study", "series of a study", "SERIES",
          lambda s, i: {"StudyInstanceUID": _pick(s.studies, i)}, selective=True),
    Query("instances_of_series", "instances of a series", "IMAGE",
          lambda s, i: dict(zip(("StudyInstanceUID", "SeriesInstanceUID"),
                                _pick(s.series, i), strict=True)), selective=True),
)  # fmt: skip
BIG = Query(
    "answer_2000",
    "~2,000 studies (StudyDate range)",
    "STUDY",
    lambda s, i: {"StudyDate": "-".join(map(_da, _pick(s.big_ranges, i)[:2]))},
)


def identifier(level: str, keys: dict[str, str]) -> dict[str, Any]:
    """The request's identifier as DICOM JSON: the level's return keys, then the matching
    keys (the unique keys of the levels above included)."""
    out: dict[str, Any] = {"00080052": {"vr": "CS", "Value": [level]}}
    for keyword in RETURN_KEYS[level]:
        tag = int(tag_for_keyword(keyword) or 0)
        out[f"{tag:08X}"] = {"vr": dictionary_VR(tag).split(" ")[0]}
    for keyword, value in keys.items():
        tag = int(tag_for_keyword(keyword) or 0)
        vr = dictionary_VR(tag)
        out[f"{tag:08X}"] = {"vr": vr, "Value": [{"Alphabetic": value} if vr == "PN" else value]}
    return out


def draw_samples(database_url: str, n: int, seed: int = 7) -> Samples:
    """``n`` values of each kind, the same ones on every run against the same catalog."""
    rng = random.Random(seed)
    order = " ORDER BY md5(pk::text || %s) LIMIT %s"  # a fixed pseudo-random sample
    with psycopg.connect(database_url, autocommit=True) as conn:

        def rows(query: str) -> list[tuple[Any, ...]]:
            return conn.execute(query + order, (str(seed), n)).fetchall()

        patient_ids = [r[0] for r in rows("SELECT patient_id FROM patient")]
        accessions = [r[0] for r in rows("SELECT accession_number FROM study")]
        studies = [r[0] for r in rows("SELECT study_instance_uid FROM study")]
        series = rows(
            "SELECT (SELECT study_instance_uid FROM study WHERE pk = study_pk),"
            " series_instance_uid FROM series"
        )
        days = conn.execute(
            "SELECT study_date, count(*) FROM study GROUP BY 1 ORDER BY 1"
        ).fetchall()
    years = range(days[0][0].year, days[-1][0].year + 1)
    months = []
    for year, month in rng.sample([(y, m) for y in years for m in range(1, 13)], n):
        start = date(year, month, 1)
        end = (start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        months.append((start, end))
    return Samples(
        patient_ids=patient_ids,
        accessions=accessions,
        months=months,
        studies=studies,
        series=[(str(a), str(b)) for a, b in series],
        big_ranges=big_ranges(days, rng, n),
    )


def big_ranges(days: list[tuple[date, int]], rng: random.Random, n: int) -> list[Any]:
    """``n`` StudyDate ranges, each holding as close to 2,000 studies as whole days allow."""
    target = min(BIG_ANSWER, sum(c for _, c in days) // 3)  # a small test catalog: a third
    out = []
    for start in rng.sample(range(len(days) // 3), n):
        total, end = 0, start
        while total + days[end][1] < target:
            total += days[end][1]
            end += 1
        over = total + days[end][1]
        if over - target < target - total:
            total = over
        else:
            end -= 1
        out.append((days[start][0], days[end][0], total))
    return out


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Run:
    """One query's repetitions through one client."""

    query: str
    client: str
    times_ms: list[float] = field(default_factory=list)
    matches: list[int] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)  # from the histograms

    def summary(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "client": self.client,
            "reps": len(self.times_ms),
            "matches": int(statistics.median(self.matches)) if self.matches else None,
            "matches_range": [min(self.matches), max(self.matches)] if self.matches else None,
            "p50_ms": _round(percentile(self.times_ms, 0.50)),
            "p95_ms": _round(percentile(self.times_ms, 0.95)),
            "max_ms": _round(max(self.times_ms, default=None)),
            "statuses": self.statuses,
            **self.server,
        }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def scrape(url: str, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """``(cumulative buckets, sum, count)`` of a Prometheus histogram, summed over its
    label sets."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    buckets: dict[float, float] = {}
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(le)] = buckets.get(float(le), 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            count += float(line.rsplit(" ", 1)[1])
    return sorted(buckets.items()), total, count


class Histograms:
    """Bucket deltas of the server-side histograms around one query's repetitions."""

    def __init__(self, sources: dict[str, tuple[str, str]]) -> None:
        self.sources = sources  # label -> (metrics URL, histogram name)
        self.before: dict[str, Any] = {}

    def start(self) -> None:
        self.before = {k: scrape(url, name) for k, (url, name) in self.sources.items()}

    def stop(self, reps: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for label, (url, name) in self.sources.items():
            buckets, total, count = scrape(url, name)
            old_buckets, old_total, old_count = self.before[label]
            old = dict(old_buckets)
            delta = [(le, c - old.get(le, 0.0)) for le, c in buckets]
            if label.endswith("pages"):  # per request: the mean over every page it took
                out[f"{label}_per_request_ms"] = _round((total - old_total) * 1000 / reps)
                out[f"{label}_count"] = int(count - old_count)
                continue
            out[f"{label}_p50_ms"] = _round(_ms(histogram_quantile(0.50, delta)))
            out[f"{label}_p95_ms"] = _round(_ms(histogram_quantile(0.95, delta)))
            n = count - old_count
            out[f"{label}_mean_ms"] = _round((total - old_total) * 1000 / n) if n else None
        return out


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


class CpuSampler(threading.Thread):
    """Machine CPU busy % (of all cores) once a second, to show whether it was shared."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        psutil.cpu_percent(None)
        while not self._halt.wait(1.0):
            self.samples.append(psutil.cpu_percent(None))

    def stop(self) -> dict[str, Any]:
        self._halt.set()
        self.join()
        s = self.samples
        return {
            "cpu_busy_mean_pct": _round(statistics.mean(s), 1) if s else None,
            "cpu_busy_max_pct": _round(max(s), 1) if s else None,
            "loadavg_at_end": [round(x, 2) for x in psutil.getloadavg()],
        }


# -- clients ------------------------------------------------------------------------------------


class EngineClient:
    """The query service's handler in this process, with the service's pool settings: the
    server time of a C-FIND without the broker hop and the DIMSE encoding."""

    name = "engine"

    def __init__(self, database_url: str, max_results: int) -> None:
        self.database_url = database_url
        self.max_results = max_results
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._open())

    async def _open(self) -> None:
        from edge.common.catalog.pool import open_read_pool
        from edge.query.service import QueryHandler
        from edge.query.settings import QuerySettings

        s = QuerySettings(database_url=self.database_url, find_max_results=self.max_results)
        self.pool: Any = await open_read_pool(  # as QueryService.start() opens it
            s.database_url,
            size=s.db_pool_size,
            statement_timeout_ms=s.find_statement_timeout_ms,
            name="bench-find",
        )
        self.handler = QueryHandler(
            self.pool,
            max_results=s.find_max_results,
            case_sensitive_names=s.find_case_sensitive_names,
        )

    def run(self, query: Query, keys: dict[str, str]) -> tuple[int, str]:
        return self.loop.run_until_complete(self._pages(query, identifier(query.level, keys)))

    async def _pages(self, query: Query, ident: dict[str, Any]) -> tuple[int, str]:
        """As the listener does (find_scp.matches): a page of 100, then pages of 1000, until none
        is left, the cap is reached, or the client's limit (one after the other: the listener
        asks for the next page while it sends one, which this does not show)."""
        payload: dict[str, Any] = {
            "model": "STUDY",
            "level": query.level,
            "identifier": ident,
            "limit": PAGE,
            "retrieve_ae_title": "EDGE",
            "returned": 0,
            # the identifiers encoded, as the listener asks for them (find_scp.matches)
            "render": {"cfind": {"transfer_syntax": IMPLICIT_VR_LE, "charsets": []}},
        }
        count = 0
        while True:
            reply = await self.handler(payload)
            if reply.get("error"):
                return count, f"0x{int(reply['error']['status']):04X}"
            found = reply.get("identifiers", reply.get("matches")) or []
            count += len(found)
            if query.stop_after and count >= query.stop_after:
                return count, "limit"
            if reply.get("capped"):
                return count, "0xA700"
            if reply.get("next") is None:
                return count, "0x0000"
            payload["returned"] += len(found)
            payload["after"] = reply["next"]
            payload["limit"] = NEXT_PAGES

    def explain(self, query: Query, ident: dict[str, Any]) -> str:
        return self.loop.run_until_complete(self._explain(query, ident))

    async def _explain(self, query: Query, ident: dict[str, Any]) -> str:
        """EXPLAIN (ANALYZE, BUFFERS) of the first page's SQL, as the engine generates it."""
        from edge.query.engine import FindRequest, find

        request = FindRequest.from_payload(
            {"model": "STUDY", "level": query.level, "identifier": ident, "limit": PAGE}
        )
        async with self.pool.connection() as conn:
            capture = _Capture(conn)
            await find(capture, request)  # type: ignore[arg-type]
            statement, params = capture.statements[0]
            explain = sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + statement
            await conn.execute(explain, params)  # once to warm, then the one kept
            cur = await conn.execute(explain, params)
            plan = "\n".join(row[0] for row in await cur.fetchall())
        return f"-- {query.name}\n{statement.as_string(None)}\n-- params: {params!r}\n{plan}\n"

    def close(self) -> None:
        self.loop.run_until_complete(self.pool.close())
        self.loop.close()


class _Capture:
    """A connection that records what it is asked to execute."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.statements: list[tuple[Any, Any]] = []

    async def execute(self, statement: Any, params: Any = None) -> Any:
        self.statements.append((statement, params))
        return await self.conn.execute(statement, params)


class CFindClient:
    """pynetdicom C-FIND, Study Root, every request over one association."""

    name = "cfind"

    def __init__(self, host: str, port: int, called_ae: str) -> None:
        from pynetdicom import AE
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            StudyRootQueryRetrieveInformationModelFind,
        )

        self.model = StudyRootQueryRetrieveInformationModelFind
        self.ae = AE(ae_title=CALLING_AE)
        self.ae.add_requested_context(self.model)
        self.ae.dimse_timeout = 300
        from edge.common.dimse import NODELAY_HANDLER  # as `edge send` and `edge echo` do

        self.assoc = self.ae.associate(
            host, port, ae_title=called_ae, evt_handlers=[NODELAY_HANDLER]
        )
        if not self.assoc.is_established:
            raise RuntimeError("C-FIND association refused")
        self.msg_id = 0

    def run(self, query: Query, keys: dict[str, str]) -> tuple[int, str]:
        from pydicom.dataset import Dataset

        ds = Dataset.from_json(identifier(query.level, keys))
        self.msg_id += 1
        count, final, cancelled = 0, "none", False
        for status, _ in self.assoc.send_c_find(ds, self.model, msg_id=self.msg_id):
            code = int(status.Status) if status else -1
            if code in (0xFF00, 0xFF01):
                count += 1
                if query.stop_after and count >= query.stop_after and not cancelled:
                    self.assoc.send_c_cancel(self.msg_id, query_model=self.model)
                    cancelled = True
            else:
                final = f"0x{code:04X}" if code >= 0 else "no response"
        return count, final

    def close(self) -> None:
        self.assoc.release()


class QidoClient:
    """QIDO-RS on the listener's HTTP port, one keep-alive connection."""

    name = "qido"

    def __init__(
        self, base_url: str, max_limit: int, auth: Callable[[], dict[str, str]] = dict
    ) -> None:
        import httpx

        # A bearer token on every request, asked for each time: the suite renews it as it
        # nears expiry, and a run outlasts one token.
        def authorize(request: httpx.Request) -> None:
            request.headers.update(auth())

        self.http = httpx.Client(
            base_url=base_url, timeout=300, event_hooks={"request": [authorize]}
        )
        self.max_limit = max_limit

    @staticmethod
    def available(base_url: str, headers: dict[str, str]) -> bool:
        request = urllib.request.Request(f"{base_url}/dicom-web/studies?limit=1", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status in (200, 204)
        except OSError:
            return False

    def run(self, query: Query, keys: dict[str, str]) -> tuple[int, str]:
        """The level's search resource, the matching keys as parameters (PS3.18 8.3.4)."""
        keys = dict(keys)
        path = "/dicom-web/studies"
        study, series = keys.pop("StudyInstanceUID", None), keys.pop("SeriesInstanceUID", None)
        if query.level == "SERIES":
            path = f"/dicom-web/studies/{study}/series"
        elif query.level == "IMAGE":
            path = f"/dicom-web/studies/{study}/series/{series}/instances"
        keys["limit"] = str(query.stop_after or self.max_limit)
        response = self.http.get(path, params=keys)
        count = len(response.json()) if response.status_code == 200 else 0
        return count, str(response.status_code)

    def close(self) -> None:
        self.http.close()


def measure(client: Any, query: Query, samples: Samples, reps: int, hist: Histograms | None) -> Run:
    run = Run(query.name, client.name)
    for i in range(WARM_UP):  # caches, prepared statements; values not measured after
        _one(client, query, samples, reps + i)
    if hist:
        hist.start()
    for i in range(reps):
        count, status, elapsed = _one(client, query, samples, i)
        run.times_ms.append(elapsed * 1000)
        run.matches.append(count)
        run.statuses[status] = run.statuses.get(status, 0) + 1
    if hist:
        time.sleep(0.2)  # the listener observes the histogram after the final response
        run.server = hist.stop(reps)
    return run


def _one(client: Any, query: Query, samples: Samples, i: int) -> tuple[int, str, float]:
    keys = query.keys(samples, i)
    started = time.perf_counter()
    count, status = client.run(query, keys)
    return count, status, time.perf_counter() - started


# -- the suite ----------------------------------------------------------------------------------


def start_suite(work_dir: Path, database_url: str, cap: int) -> Any:
    """A suite on private ports whose catalog is the loaded database."""
    from edge.cli.devsuite import DevSuite

    suite = DevSuite(
        work_dir,
        extra_env={
            "EDGE_DATABASE_URL": database_url,
            "EDGE_FIND_MAX_RESULTS": str(cap),
            "EDGE_QIDO_MAX_LIMIT": str(cap),
            # The loaded studies were never announced; an announcer that found 100,000 studies
            # due would compete with the measurement. Nothing arrives during it anyway.
            "EDGE_STABLE_AFTER": str(10 * 365 * 86400),
        },
    )
    # Its catalog, and where it keeps the users whose tokens the benchmark asks for.
    suite.database_url = database_url
    suite.start()
    suite.edge(
        "ae", "add", CALLING_AE, "--host", "127.0.0.1", "--port", "11112", "--allow", "echo,find"
    )
    time.sleep(1.0)  # the listener drops its admission cache on the ae.changed event
    return suite


def suite_phase(
    args: argparse.Namespace, samples: Samples, queries: tuple[Query, ...], cap: int, reps: int
) -> tuple[list[Run], dict[str, Any]]:
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-find-") as tmp:
        suite = start_suite(Path(tmp), args.database_url, cap)
        try:
            listener = f"http://127.0.0.1:{suite.http_port}/metrics"
            query_svc = f"http://127.0.0.1:{suite.query_port}/metrics"
            clients: list[tuple[Any, Histograms]] = []
            if "cfind" in args.clients:
                hist = Histograms(
                    {
                        "server": (listener, "edge_cfind_seconds"),
                        "query_service_pages": (query_svc, "edge_query_find_seconds"),
                    }
                )
                clients.append((CFindClient("127.0.0.1", suite.dicom_port, "EDGE"), hist))
            base = f"http://127.0.0.1:{suite.http_port}"
            if "qido" in args.clients:
                radiologist = partial(suite.auth_headers, "radiologist")
                if QidoClient.available(base, radiologist()):
                    hist = Histograms(
                        {
                            "server": (listener, "edge_qido_seconds"),
                            "query_service_pages": (query_svc, "edge_query_find_seconds"),
                        }
                    )
                    clients.append((QidoClient(base, cap, radiologist), hist))
                else:
                    print("QIDO-RS is not served by this listener: skipped", flush=True)
            cpu = CpuSampler()
            cpu.start()
            for client, hist in clients:
                for query in queries:
                    run = measure(client, query, samples, reps, hist)
                    runs.append(run)
                    _progress(run)
                client.close()
            return runs, cpu.stop()
        finally:
            suite.stop()


def engine_phase(
    args: argparse.Namespace, samples: Samples, queries: tuple[Query, ...], cap: int, reps: int
) -> tuple[list[Run], list[str], dict[str, Any]]:
    client = EngineClient(args.database_url, cap)
    runs, plans = [], []
    cpu = CpuSampler()
    cpu.start()
    try:
        for query in queries:
            run = measure(client, query, samples, reps, None)
            runs.append(run)
            _progress(run)
        load = cpu.stop()
        for query in queries:
            plans.append(client.explain(query, identifier(query.level, query.keys(samples, 0))))
    finally:
        client.close()
    return runs, plans, load


def _progress(run: Run) -> None:
    s = run.summary()
    server = f"  server p50 {s.get('server_p50_ms')} p95 {s.get('server_p95_ms')}"
    print(
        f"  {run.client:<6} {run.query:<20} matches {s['matches']!s:>5}"
        f"  p50 {s['p50_ms']:8.2f}  p95 {s['p95_ms']:8.2f} ms" + (server if run.server else ""),
        flush=True,
    )


# -- report -------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return str(value)


def print_table(summaries: list[dict[str, Any]], labels: dict[str, str]) -> None:
    by = {(s["query"], s["client"]): s for s in summaries}
    clients = [c for c in ("engine", "cfind", "qido") if any(k[1] == c for k in by)]
    header = ["query", "matches"]
    for c in clients:
        header += [f"{c} p50/p95 ms"] + (
            [f"{c} server p50/p95 (mean) ms", f"{c} query svc ms/req"] if c != "engine" else []
        )
    rows = [header]
    for name, label in labels.items():
        row = [
            label,
            _fmt((by.get((name, "engine")) or by.get((name, "cfind")) or {}).get("matches")),
        ]
        for c in clients:
            s = by.get((name, c), {})
            row.append(f"{_fmt(s.get('p50_ms'))} / {_fmt(s.get('p95_ms'))}")
            if c != "engine":
                row.append(
                    f"{_fmt(s.get('server_p50_ms'))} / {_fmt(s.get('server_p95_ms'))}"
                    f" ({_fmt(s.get('server_mean_ms'))})"
                )
                row.append(_fmt(s.get("query_service_pages_per_request_ms")))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reuse", action="store_true", help="keep a matching earlier load")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--big-reps", type=int, default=20, help="of the 2,000-study answer")
    parser.add_argument(
        "--clients", default="engine,cfind,qido", help="comma list of engine, cfind, qido"
    )
    parser.add_argument(
        "--queries",
        default="",
        help="comma list of query names to run (default: the whole mix and the 2,000-study"
        f" answer): {', '.join(q.name for q in (*MIX, BIG))}",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--explain", type=Path, help="write the EXPLAIN plans here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the suites started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.clients = {c.strip() for c in args.clients.split(",") if c.strip()}
    chosen = {q.strip() for q in args.queries.split(",") if q.strip()}
    unknown = chosen - {q.name for q in (*MIX, BIG)}
    if unknown:
        print(f"unknown queries: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    mix_queries = tuple(q for q in MIX if not chosen or q.name in chosen)
    run_big = not chosen or BIG.name in chosen
    load = ensure_loaded(args.database_url, studies=args.studies, seed=args.seed, reuse=args.reuse)
    samples = draw_samples(args.database_url, max(args.reps, args.big_reps) + WARM_UP)
    print(f"2,000-study ranges hold {sorted(r[2] for r in samples.big_ranges)} studies")
    runs: list[Run] = []
    plans: list[str] = []
    phases: dict[str, Any] = {}
    if "engine" in args.clients:
        print("engine (QueryHandler in process), result cap 1000:", flush=True)
        mix, plans, phases["engine"] = engine_phase(
            args, samples, mix_queries, DEFAULT_CAP, args.reps
        )
        runs += mix
        if run_big:
            print(f"engine, result cap {BIG_CAP}:", flush=True)
            big, big_plans, phases["engine_big"] = engine_phase(
                args, samples, (BIG,), BIG_CAP, args.big_reps
            )
            runs += big
            plans += big_plans
    if args.clients & {"cfind", "qido"}:
        print("suite, result cap 1000:", flush=True)
        if mix_queries:
            mix, phases["suite"] = suite_phase(args, samples, mix_queries, DEFAULT_CAP, args.reps)
            runs += mix
        if run_big:
            print(f"suite, result cap {BIG_CAP}:", flush=True)
            big, phases["suite_big"] = suite_phase(args, samples, (BIG,), BIG_CAP, args.big_reps)
            runs += big
    summaries = [r.summary() for r in runs]
    print()
    print_table(summaries, {q.name: q.label for q in (*MIX, BIG)})
    print(f"\nmachine load per phase: {json.dumps(phases)}")
    if args.explain:
        args.explain.write_text("\n".join(plans))
    if args.json:
        out = {
            "load": load,
            "machine": machine(),
            "phases": phases,
            "big_ranges": [(str(a), str(b), n) for a, b, n in samples.big_ranges],
            "results": summaries,
            "plans": plans,
        }
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
