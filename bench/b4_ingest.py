"""B4: ingest against Orthanc. STOW-RS MB/s of the 200-slice CT (with the realistic fake PHI ``synth`` writes by
default) and of the 32,000-frame WSI, the gateway without and with the PHI hooks against Orthanc 1.10 (Debian's
``orthanc`` + ``orthanc-dicomweb``, default settings, its own ports and folder) in the same run; peak RSS (the
largest gunicorn process, worker or ingest pool process; Orthanc's process); the in-process index build time of
the WSI; the cost of the PHI hooks.

Three targets run side by side: the gateway without hooks, the gateway with ``DICOMGW_PHI_POLICY`` set to a
minimal policy written by this benchmark (every upload that declares region ``bench`` is scanned in full and then
allowed to a destination that may hold identifiable data; anything else is rejected), and Orthanc. The CT
carries fake PHI, so the scan finds it and the policy decision and audit run on every file; the de-identifier
does not (that would measure something else). Each CT round stores a fresh series (new UIDs: a re-upload of
stored bytes would be a cheap duplicate) into all three, rotating which goes first; every ratio is the median of
the per-round ratios (each round's uploads ran back to back, under the same machine load). The WSI is stored
once into each, in rotated order. One streaming multipart POST per dataset, the same client and body for all.
An in-process breakdown per CT slice (index, fsync, PHI hook, audit record) says where the time goes, and so does the
CPU per slice of the gateway's processes during each CT upload (the request's gunicorn worker, the ingest pool, NGINX).
Targets: CT with hooks >= 1.0x Orthanc, without >= 1.5x; WSI >= 1.5x; index < 2 s (every offset-table variant).
Before the rounds, an 8-slice series goes to each side untimed (caches warm, the gateway's ingest pool starts), and
more untimed uploads go to each gateway until every gunicorn worker has started its ingest pool.
``--quick``: two CT rounds instead of five.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    BenchSkip,
    BenchStack,
    Report,
    RssSampler,
    cpu_seconds,
    ct_series,
    descendants_of,
    header,
    main,
    median,
    process_tree,
    rss_of,
    run_dir,
    running_stack,
    timed,
    wsi,
)
from gateway.tools.orthanc import OrthancMissing, start_orthanc

CT_SEEDS = (41, 42, 43, 44, 45)  # CT series with fake PHI (B5 uses clean ones)
POLICY = """\
# Written by bench/b4_ingest.py: scan everything, allow what declares region "bench", reject the rest.
version = "bench-1"

[destinations.local]
storage = "default"
region = "bench"
identifiable_allowed = true

[[rules]]
id = "bench-allow"
match = { region = "bench" }
action = "allow"
destination = "local"

[default]
action = "reject"
reason = "the benchmark policy allows only uploads that declare region bench"
"""
UPLOAD_HEADERS = {"X-DICOMGW-Tenant": "bench", "X-DICOMGW-Region": "bench"}


def _index_seconds(path: Path, runs: int = 3) -> list[float]:
    from gateway.dicom.index import index_file

    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        indexed = index_file(path)
        times.append(time.perf_counter() - t0)
        if indexed.number_of_frames != 32_000 or indexed.frame_index is None:
            raise AssertionError("the WSI index does not hold 32,000 frames")
    return times


def _per_slice_ms(files: list[Path], work: Callable[[Path], object]) -> float:
    times = []
    for path in files:
        t0 = time.perf_counter()
        work(path)
        times.append(time.perf_counter() - t0)
    return median(times) * 1000


def _fsync_ms(folder: Path, size: int, runs: int = 20) -> float:
    data = os.urandom(size)
    times = []
    for i in range(runs):
        target = folder / f"fsync-{i}.bin"
        t0 = time.perf_counter()
        with target.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        times.append(time.perf_counter() - t0)
        target.unlink()
    return median(times) * 1000


def _hook_costs(policy: Path, sample: list[Path], var: Path) -> tuple[float, float]:
    """In-process cost per CT slice of what the hooked stack does in addition: the PHI hook (scan + policy)
    and the audit record, written by ``Catalog.add_audit`` in a transaction of its own."""
    from gateway.catalog import Catalog
    from gateway.hooks import UploadContext
    from gateway.phi.hook import PhiHook
    from gateway.phi.policy import load_policy

    hook = PhiHook(load_policy(policy))
    context = UploadContext(source="stow", sub="bench", tenant="bench", region="bench")
    if hook(sample[0], context).action != "accept":
        raise AssertionError("the benchmark policy does not accept the CT")
    catalog = Catalog(f"sqlite:///{var / 'audit-probe.db'}")
    catalog.migrate()
    try:
        audit_ms = _per_slice_ms(sample, lambda p: catalog.add_audit(
            source="stow", sub="bench", sop_uid="1.2.3", study_uid="1.2", decision="allow", rule="bench-allow",
            tags=["(0008,103E)"], policy_version="bench-1"))
    finally:
        catalog.close()
    return _per_slice_ms(sample, lambda p: hook(p, context)), audit_ms


def _audit_rows(stack: BenchStack) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(stack.stack.database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM audit")).scalar_one())
    finally:
        engine.dispose()


def _warm_every_worker(stack: BenchStack, series: list[list[Path]], attempts: int = 10) -> bool:
    """Untimed uploads until every gunicorn worker has started its ingest pool (a worker starts it on its first
    upload, ~1-3 s here, and which worker takes a connection is the kernel's choice: without this, a timed round
    could pay one worker's start). The series go at once, one each: NGINX opens upstream connections beyond its
    idle keep-alive ones, which either worker may accept."""
    from concurrent.futures import ThreadPoolExecutor

    master = stack.stack.processes["gunicorn"].pid
    for _ in range(attempts):
        tree = process_tree()
        workers = tree.get(master, [])
        if workers and all(len(_pool_processes(worker, tree)) >= 2 for worker in workers):
            return True
        with ThreadPoolExecutor(len(series)) as uploads:
            list(uploads.map(lambda files: stack.stow(files, UPLOAD_HEADERS), series))
    return False


def _pool_processes(worker: int, tree: dict[int, list[int]]) -> list[int]:
    """A worker's ingest processes: the leaves below it (the fork server's children, or spawned ones) other than
    multiprocessing's resource tracker."""
    return [
        pid
        for pid in descendants_of(worker, tree)
        if pid not in tree and b"resource_tracker" not in _cmdline(pid)
    ]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _cpu_split(stack: BenchStack) -> dict[str, float]:
    """CPU seconds so far of each gunicorn worker (``worker <pid>``), of the ingest pool processes (all workers'
    together) and of NGINX: ``_cpu_used`` subtracts two readings to see where one upload's CPU went."""
    master = stack.stack.processes["gunicorn"].pid
    tree = process_tree()
    workers = tree.get(master, [])
    return {
        **{f"worker {worker}": cpu_seconds([worker]) for worker in workers},
        # everything below the workers: the pool's processes and the fork server that forks them
        "pool": cpu_seconds([pid for worker in workers for pid in descendants_of(worker, tree)]),
        "nginx": cpu_seconds(stack.nginx_pids()),
    }


def _cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds between two ``_cpu_split`` readings: the worker that used the most (the one the STOW ran in:
    each worker's own difference, not the difference of the busiest so far, which may be the other one), the
    pool processes and NGINX."""
    used = {part: after[part] - before.get(part, 0.0) for part in after}
    workers = [seconds for part, seconds in used.items() if part.startswith("worker ")]
    return {"worker": max(workers, default=0.0), "pool": used["pool"], "nginx": used["nginx"]}


def _orthanc_stow(url: str, files: list[Path]) -> tuple[float, int]:
    """One streaming multipart STOW-RS POST to Orthanc's DICOMweb plugin, as ``BenchStack.stow`` posts."""
    import requests

    from gateway.dicomweb.multipart import encode_multipart

    body = encode_multipart(list(files))
    headers = {"Content-Type": body.content_type, "Accept": "application/dicom+json"}
    started = time.perf_counter()
    answer = requests.post(f"{url}/dicom-web/studies", data=body, headers=headers, timeout=900)
    seconds = time.perf_counter() - started
    if answer.status_code != 200 or "00081199" not in answer.json():
        raise AssertionError(f"Orthanc's STOW answered {answer.status_code}: {answer.text[:400]}")
    return seconds, len(body)


def _orthanc_count(url: str) -> int:
    import requests

    return int(requests.get(f"{url}/statistics", timeout=30).json()["CountInstances"])


def run(quick: bool = False) -> Report:
    started = time.perf_counter()
    report = header("B4", "ingest: STOW-RS MB/s against Orthanc, peak RSS, index build, PHI hooks")
    slide = wsi()
    seeds = CT_SEEDS[:2] if quick else CT_SEEDS
    cts = {seed: ct_series(seed=seed, clean=False) for seed in seeds}

    index_times = {}
    for offsets in ("bot", "empty", "eot"):
        path = slide if offsets == "bot" else wsi(offsets=offsets)
        index_times[offsets] = median(_index_seconds(path))
    report.say("index_file(32,000-frame WSI, 179 MB), in-process, median of 3: "
               + ", ".join(f"{name} offset table {t:.3f} s" for name, t in index_times.items()))
    worst = max(index_times.values())
    report.check("index build, 32,000 frames (s, slowest offset variant)", worst, "< 2 s", worst < 2.0)

    with run_dir("b4") as var:
        policy = var / "phi-policy.toml"
        policy.write_text(POLICY)
        try:
            from gateway.phi.policy import load_policy

            load_policy(policy)
            hooks_error = ""
        except Exception as error:  # any failure here means "not measured", never a crash of the whole run
            hooks_error = f"the PHI policy does not load ({type(error).__name__}: {error})"
        from gateway.dicom.index import index_file

        sample = cts[seeds[0]][:40]
        slice_size = sample[0].stat().st_size
        breakdown = [f"index_file {_per_slice_ms(sample, index_file):.2f} ms",
                     f"write+fsync of {slice_size // 1000} KB {_fsync_ms(var, slice_size):.2f} ms"]
        hook_ms = audit_ms = float("nan")
        if not hooks_error:
            hook_ms, audit_ms = _hook_costs(policy, sample, var)
            breakdown += [f"PhiHook (scan + policy) {hook_ms:.2f} ms",
                          f"Catalog.add_audit (own SQLite transaction, synchronous=FULL) {audit_ms:.2f} ms"]
        report.say("per CT slice (fake PHI), in-process (median of 40): " + ", ".join(breakdown))
        with running_stack(var / "plain") as plain, contextlib.ExitStack() as exits:
            hooked = None
            if not hooks_error:
                try:
                    hooked = exits.enter_context(
                        running_stack(var / "hooks", extra_env={"DICOMGW_PHI_POLICY": str(policy)}))
                except BenchSkip as skip:
                    hooks_error = str(skip)
            orthanc_error = ""
            try:
                orthanc = start_orthanc(var / "orthanc")
                exits.callback(orthanc.stop)
            except (OrthancMissing, RuntimeError) as error:
                orthanc, orthanc_error = None, str(error).splitlines()[0]
            targets: dict[str, Callable[[list[Path]], tuple[float, int]]] = {
                "no hooks": lambda files: plain.stow(files, UPLOAD_HEADERS)[:2]}
            # per process: the sum would jump when the other gunicorn worker starts its ingest pool mid-run. A
            # probe is made per upload (the processes found before it, not during it: see BenchStack.rss_probe)
            rss: dict[str, Callable[[], Callable[[], int]]] = {
                "no hooks": functools.partial(plain.rss_probe, largest=True)}
            if hooked is not None:
                targets["PHI hooks"] = lambda files: hooked.stow(files, UPLOAD_HEADERS)[:2]
                rss["PHI hooks"] = functools.partial(hooked.rss_probe, largest=True)
            if orthanc is not None:
                targets["Orthanc"] = functools.partial(_orthanc_stow, orthanc.url)
                orthanc_pid = orthanc.process.pid
                rss["Orthanc"] = lambda: functools.partial(rss_of, orthanc_pid)
            warm = ct_series(seed=49, slices=8, clean=False)
            for name in targets:  # untimed: each side's caches and the gateway's ingest pool start
                targets[name](warm)
            for stack in (plain, hooked):
                spread = [warm, *(ct_series(seed=seed, slices=8) for seed in (46, 47, 48))]
                if stack is not None and not _warm_every_worker(stack, spread):
                    report.say("a gunicorn worker did not start its ingest pool during the warm-up")
            idle = {name: probe()() for name, probe in rss.items()}
            ct_times: dict[str, list[float]] = {name: [] for name in targets}
            ct_rates: dict[str, list[float]] = {name: [] for name in targets}
            peaks: dict[str, int] = dict.fromkeys(targets, 0)
            cpu: dict[str, list[dict[str, float]]] = {name: [] for name in targets}

            def store(name: str, files: list[Path]) -> tuple[float, int] | None:
                nonlocal hooks_error
                stack = {"no hooks": plain, "PHI hooks": hooked}.get(name)
                before = _cpu_split(stack) if stack is not None else {}
                try:
                    with RssSampler(rss[name]()) as sampler:
                        seconds, size = targets[name](files)
                except AssertionError as error:
                    if name == "PHI hooks":
                        hooks_error = f"STOW with the PHI hooks failed: {error}"
                        targets.pop(name)
                        return None
                    raise
                peaks[name] = max(peaks[name], sampler.peak)
                if stack is not None:
                    after = _cpu_split(stack)
                    cpu[name].append({part: seconds / len(files) for part, seconds in _cpu_used(before, after).items()})
                return seconds, size

            for i, files in enumerate(cts.values()):
                names = list(targets)
                for name in names[i % len(names):] + names[: i % len(names)]:  # rotate who goes first
                    if name not in targets or (measured := store(name, files)) is None:
                        continue
                    seconds, size = measured
                    ct_times[name].append(seconds)
                    ct_rates[name].append(size / 1e6 / seconds)
                    report.say(f"CT round {i + 1}, {name}: {size / 1e6:.0f} MB in {seconds:.2f} s = "
                               f"{size / 1e6 / seconds:.0f} MB/s, peak RSS {peaks[name] / 1e6:.0f} MB")
            for name in targets:
                report.say(f"CT, {name}: median {median(ct_rates[name]):.0f} MB/s over {len(ct_rates[name])} rounds; "
                           f"RSS idle {idle[name] / 1e6:.0f} MB, peak {peaks[name] / 1e6:.0f} MB")
                if cpu[name]:
                    ms = {part: median([r[part] for r in cpu[name]]) * 1000 for part in ("worker", "pool", "nginx")}
                    report.say(f"CT, {name}: CPU per slice (median of rounds): the busiest gunicorn worker "
                               f"{ms['worker']:.2f} ms, ingest pool processes {ms['pool']:.2f} ms, NGINX "
                               f"{ms['nginx']:.2f} ms")
            if "PHI hooks" in targets:
                audited = _audit_rows(hooked) if hooked is not None else 0
                report.say(f"the hooked stack wrote {audited} audit records for {200 * len(cts)} CT instances "
                           f"(the no-hooks stack {_audit_rows(plain)})")
                if audited < 200 * len(cts) + len(warm):
                    hooks_error = "the PHI hook did not run on every file (audit records missing)"
            expected = 200 * len(cts) + len(warm)
            if orthanc is not None and _orthanc_count(orthanc.url) != expected:
                raise AssertionError(f"Orthanc holds {_orthanc_count(orthanc.url)} instances, not {expected}")
            wsi_times: dict[str, float] = {}
            names = list(targets)
            for name in names[len(cts) % len(names):] + names[: len(cts) % len(names)]:
                if (measured := store(name, [slide])) is None:
                    continue
                seconds, size = measured
                wsi_times[name] = seconds
                report.say(f"WSI, {name}: {size / 1e6:.0f} MB in {seconds:.2f} s = {size / 1e6 / seconds:.0f} "
                           f"MB/s, peak RSS {peaks[name] / 1e6:.0f} MB (idle {idle[name] / 1e6:.0f} MB)")

    def per_round(name: str, base: str) -> float:
        # paired: each round's uploads ran back to back, so their ratio sees the same machine load
        return median([b / t for t, b in zip(ct_times[name], ct_times[base], strict=True)])

    for name, target in (("PHI hooks", 1.0), ("no hooks", 1.5)):
        label = f"CT STOW-RS (fake PHI), gateway {name} / Orthanc (rate ratio)"
        if "Orthanc" in targets and name in targets and len(ct_times[name]) == len(ct_times["Orthanc"]):
            ratio = per_round(name, "Orthanc")
            report.check(label, ratio, f">= {target}", ratio >= target,
                         f"medians {median(ct_rates[name]):.0f} vs {median(ct_rates['Orthanc']):.0f} MB/s")
        else:
            report.check(label, float("nan"), f">= {target}", None, orthanc_error or hooks_error or "not measured")
    for name in ("no hooks", "PHI hooks"):
        label = f"WSI STOW-RS, gateway {name} / Orthanc (rate ratio)"
        if "Orthanc" in wsi_times and name in wsi_times:
            ratio = wsi_times["Orthanc"] / wsi_times[name]
            report.check(label, ratio, ">= 1.5", ratio >= 1.5)
        else:
            report.check(label, float("nan"), ">= 1.5", None, orthanc_error or hooks_error or "not measured")
    if "PHI hooks" in targets and not hooks_error:
        overhead = 1 / per_round("PHI hooks", "no hooks") - 1
        per_slice = median(ct_times["no hooks"]) / 200 * 1000
        report.say(f"in-process, the hook and its audit record cost {hook_ms + audit_ms:.2f} ms per slice, "
                   f"{(hook_ms + audit_ms) / per_slice:.0%} of the no-hooks stack's {per_slice:.2f} ms per slice")
        report.check("CT ingest time added by the PHI hooks (median of per-round ratios)", overhead, "< 0.2 (20%)",
                     overhead < 0.2,
                     f"medians {median(ct_times['PHI hooks']):.2f} s vs {median(ct_times['no hooks']):.2f} s")
    growth = max(peaks[n] - idle[n] for n in ("no hooks", "PHI hooks") if n in peaks) / 1e6
    report.check("peak RSS growth of a gunicorn process (worker or ingest pool) during the uploads (MB)", growth,
                 "< 100 MB (flat)", growth < 100)
    return timed(report, started)


def cli() -> Report:
    import sys

    return run(quick="--quick" in sys.argv[1:])


if __name__ == "__main__":
    main(cli)
