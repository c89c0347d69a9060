"""Registry under load: metric rows/s with 1 and 8 concurrent writers, and the logging overhead on a training step.

Part 1 — writers. ``--writers`` processes (default 1, then 8), each with its own run in one fresh registry, write
metrics at full speed for ``--seconds``: batches of ``--batch`` rows through ``Registry.log_metrics`` plus a
heartbeat, exactly what a training process's reporter thread does at every flush (it flushes every
``trainer.heartbeat_s``, 5 s by default; here there is no pause at all). Printed: rows/s in total and per writer,
write latency (median / p99 / max) and how many writes failed (target: no "database is locked", ever).

Part 2 — overhead. One process trains a small CNN step (batch 16, 32 px; about the ``tiny`` CNN's size) on CPU,
alternating blocks of ``--steps`` steps without reporting and with a live ``Reporter`` (6 metrics logged every
step — the trainer logs every ``log_every`` = 10 steps by default — and its thread flushing every 0.2 s instead of
5 s), while 7 other runs' reporters write to the same registry (20 rows + a heartbeat every 0.2 s each). Printed: median step time of each,
the difference as a share of the step time (target < 1 %), and the directly timed cost of the ``metric()`` calls
per step as a share (the part of the overhead that is not scheduling noise).

Run by hand: ``.venv/bin/python bench/registry.py [--seconds 3] [--steps 40] [--rounds 5]``. Not a test.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

from dwc_core.runs.registry import Registry


def _make_runs(path: Path, n: int) -> list[int]:
    reg = Registry(path)
    ids = []
    for i in range(n):
        row = reg.create_run(f"bench{i}", {"trainer": {"seed": i, "epochs": 1}}, path.parent)
        ids.append(row["id"])
    reg.close()
    return ids


def _writer(
    path: str, run_id: int, seconds: float, batch: int, start_at: float, out, pause: float = 0.0
) -> None:
    reg = Registry(path)
    while time.time() < start_at:
        time.sleep(0.001)
    lat, errors, rows, step = [], [], 0, 0
    t_end = time.time() + seconds
    while time.time() < t_end:
        chunk = [
            {"step": step + i, "epoch": 0.0, "split": "train", "name": "loss", "value": 0.5}
            for i in range(batch)
        ]
        t0 = time.perf_counter()
        try:
            reg.log_metrics(run_id, chunk)
            reg.heartbeat(run_id, step=step, phase="train")
            rows += batch
        except Exception as exc:  # noqa: BLE001 — counted and printed
            errors.append(str(exc))
        lat.append(time.perf_counter() - t0)
        step += batch
        if pause:
            time.sleep(pause)
    out.put((rows, lat, errors))


def writers(n: int, seconds: float, batch: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="dwc-bench-registry-"))
    path = folder / "registry.db"
    ids = _make_runs(path, n)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 1.5  # all start together once the interpreters are up
    procs = [ctx.Process(target=_writer, args=(str(path), rid, seconds, batch, start_at, out)) for rid in ids]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    rows = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])
    errors = [e for r in results for e in r[2]]
    return {
        "writers": n,
        "rows_per_s": rows / seconds,
        "per_writer": rows / seconds / n,
        "median_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
        "max_ms": 1000 * lat[-1],
        "errors": errors,
    }


# ------------------------------------------------------------------------------------------------ overhead
def overhead(steps: int, rounds: int, seconds_guard: float = 600.0) -> dict:
    import torch

    from dwc_core.engine.reporting import Reporter

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(128, 256, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(256, 64),
    )  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(16, 3, 32, 32)

    def step() -> float:
        loss = model(x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    folder = Path(tempfile.mkdtemp(prefix="dwc-bench-overhead-"))
    path = folder / "registry.db"
    ids = _make_runs(path, 8)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    busy_s = seconds_guard
    noise = [
        ctx.Process(target=_writer, args=(str(path), rid, busy_s, 20, time.time(), out, 0.2), daemon=True)
        for rid in ids[1:]
    ]
    for p in noise:
        p.start()
    time.sleep(2.0)  # the other writers are up
    run_dir = folder / "run"
    run_dir.mkdir()
    reporter = Reporter(path, ids[0], run_dir, interval=0.2, sink="registry")
    reporter.start()
    for _ in range(5):
        step()
    plain, logged, call_s, plain_cpu, logged_cpu = [], [], [], [], []
    n_step = 0
    tid = reporter._thread.native_id if reporter._thread else None
    thread_cpu0 = _thread_cpu(tid)
    try:
        for r in range(rounds):
            for mode in ("plain", "logged") if r % 2 == 0 else ("logged", "plain"):
                t0 = time.perf_counter()
                c_block = time.process_time()
                calls = 0.0
                for _ in range(steps):
                    loss = step()
                    n_step += 1
                    if mode == "logged":
                        c0 = time.perf_counter()
                        value = float(loss)
                        for name in ("loss", "loss_a", "loss_b", "lr", "samples_per_s", "grad_norm"):
                            reporter.metric(n_step, 0.0, "train", name, value)
                        reporter.progress(step=n_step, loss=value)
                        calls += time.perf_counter() - c0
                per_step = (time.perf_counter() - t0) / steps
                cpu_step = (time.process_time() - c_block) / steps
                (plain if mode == "plain" else logged).append(per_step)
                (plain_cpu if mode == "plain" else logged_cpu).append(cpu_step)
                if mode == "logged":
                    call_s.append(calls / steps)
        thread_cpu = _thread_cpu(tid) - thread_cpu0
    finally:
        reporter.close()
        for p in noise:
            p.terminate()
    written = len(Registry(path).metrics(ids[0]))
    base = statistics.median(plain)
    base_cpu = statistics.median(plain_cpu)
    return {
        "step_cpu_ms": 1000 * base_cpu,
        "cpu_share": statistics.median(logged_cpu) / base_cpu - 1,
        # the reporter thread's own CPU (its flushes) over the whole timed span, per step, over a step's CPU time
        "thread_share": thread_cpu / (2 * rounds * steps) / base_cpu if tid else float("nan"),
        "step_ms": 1000 * base,
        "logged_step_ms": 1000 * statistics.median(logged),
        "overhead_share": statistics.median(logged) / base - 1,
        "call_share": statistics.median(call_s) / base,
        "rows_written": written,
        "reporter_error": repr(reporter.error) if reporter.error else None,
    }


def _thread_cpu(tid: int | None) -> float:
    """CPU seconds (user + system) used so far by thread ``tid`` of this process (Linux /proc)."""
    if tid is None:
        return 0.0
    import os

    try:
        with open(f"/proc/self/task/{tid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=20, help="metric rows per write (one reporter flush)")
    ap.add_argument("--writers", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--steps", type=int, default=40, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"metric writers, {args.seconds:g} s at full speed, {args.batch} rows + 1 heartbeat per write:")
    for n in args.writers:
        r = writers(n, args.seconds, args.batch)
        print(
            f"  {n} writer(s): {r['rows_per_s']:,.0f} rows/s ({r['per_writer']:,.0f} per writer); write latency "
            f"median {r['median_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.0f} ms; "
            f"failed writes {len(r['errors'])}" + (f" (first: {r['errors'][0]})" if r["errors"] else "")
        )
    o = overhead(args.steps, args.rounds)
    print(
        f"logging overhead on a training step (6 metrics every step, flush every 0.2 s, 7 other runs flushing):\n"
        f"  CPU time per step {o['step_cpu_ms']:.2f} ms without reporting; with reporting "
        f"{100 * o['cpu_share']:+.2f} % (median of {args.rounds} alternating rounds; target < 1 %)\n"
        f"  the reporter thread's flushes use {100 * o['thread_share']:.2f} % of a step's CPU time, the "
        f"metric()/progress() calls {100 * o['call_share']:.3f} %\n"
        f"  wall time per step {o['step_ms']:.2f} ms vs {o['logged_step_ms']:.2f} ms: {100 * o['overhead_share']:+.2f} % "
        f"(wall time on a shared machine is noisy; CPU time is the figure to read)\n  "
        f"{o['rows_written']} rows reached the registry; reporter error: {o['reporter_error']}"
    )


if __name__ == "__main__":
    main()
