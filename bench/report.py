"""Write the benchmark figures (bench/results/*.json) into BENCHMARKS.md, with the growth plot.

Only the block between the two markers is rewritten; every other section of BENCHMARKS.md
(the permutation-importance section, the hand-written findings) is left as it is.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, median

BEGIN = "<!-- bench/report.py: generated figures begin -->"
END = "<!-- bench/report.py: generated figures end -->"
PLOT = RESULTS / "rerank_growth.png"
BACKEND_NAMES = {"sqlite": "sqlite", "postgresql": "PostgreSQL"}


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:,.0f} ms" if ms < 10_000 else f"{seconds:,.1f} s"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:,.1f}×" if b else "∞"


def _calls(rows: Sequence[dict[str, Any]], who: str, kind: str) -> str:
    """Exact call counts; a range if they differ between repetitions."""
    values = sorted({r[who]["calls"][kind] for r in rows})
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def _endpoints(calls: dict[str, Any]) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in calls["by_endpoint"].items())


def machine_section(m: dict[str, Any], runs: Sequence[dict[str, Any]] = ()) -> list[str]:
    out = [
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; {m['memory_gb']} GB RAM; {m['os']}",
        f"- Python {m['python']}, MLflow {m['mlflow']}, XGBoost {m['xgboost']}, scikit-learn {m['sklearn']}, "
        f"SQLAlchemy {m['sqlalchemy']}",
        f"- PostgreSQL {m['postgresql']} (127.0.0.1), sqlite {m['sqlite']}",
    ]
    for r in runs:
        end = f", {r['loadavg_at_end']:.1f} at the end" if r.get("loadavg_at_end") is not None else ""
        when = f"{r['started']} – {r['finished']}: " if r.get("started") else ""
        out.append(
            f"- Watcher benchmark run ({when}{', '.join(f'{n:,}' for n in r['sizes'])} runs"
            f"{', idle grid' if r['idle'] else ''}): load average {r['loadavg_at_start']:.1f} at the start{end} "
            "(a shared machine; ratios are measured side by side, so load hits both sides)"
        )
    if not runs:
        out.append(f"- Load average when the watcher benchmark started: {m['loadavg_at_start']:.1f}")
    return [*out, ""]


def merged_watcher() -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """``watcher.json`` plus the sizes of any ``watcher_*.json`` (e.g. a separate 50,000-run
    run), and one line per run for the machine section; each size's figures come from one run."""
    main = _load("watcher")
    if main is None:
        return None, []
    extras = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("watcher_*.json"))]
    runs = []
    for w in [main, *extras]:
        sizes = sorted({int(n) for res in w["backends"].values() for n in res["rerank"]})
        runs.append(
            {
                "started": w.get("started"),
                "finished": w.get("finished"),
                "loadavg_at_start": w["machine"]["loadavg_at_start"],
                "loadavg_at_end": w.get("loadavg_at_end"),
                "sizes": sizes,
                "idle": any(res.get("idle") for res in w["backends"].values()),
            }
        )
    for w in extras:
        for b, res in w["backends"].items():
            target = main["backends"].setdefault(b, {"idle": None, "rerank": {}})
            for n, r in res["rerank"].items():
                target["rerank"].setdefault(n, r)
    return main, runs


def _ordered(w: dict[str, Any]) -> dict[str, Any]:
    """Backends as sqlite, PostgreSQL; sizes ascending (the JSON keeps keys sorted as text)."""
    order = {b: i for i, b in enumerate(BACKEND_NAMES)}
    out = {}
    for b in sorted(w["backends"], key=lambda b: order.get(b, 99)):
        res = dict(w["backends"][b])
        res["rerank"] = {n: res["rerank"][n] for n in sorted(res["rerank"], key=int)}
        out[b] = res
    return out


HOLDERS = "holder check"


def _search(p: dict[str, Any], kind: str, field: str) -> float:
    return float(p.get("searches", {}).get(kind, {}).get(field, 0))


def _holder_cell(p: dict[str, Any]) -> str:
    """The holder check of one pass: runs it returned, its time and share of the pass."""
    if HOLDERS not in p.get("searches", {}):
        return "–"
    t = _search(p, HOLDERS, "seconds")
    return f"{_search(p, HOLDERS, 'runs'):,.0f} runs, {_ms(t)} ({t / p['seconds']:.0%})"


def first_ranking_section(backends: dict[str, Any]) -> list[str]:
    out = [
        "## Watcher: first ranking vs the guide's way",
        "",
        "One experiment of N finished runs without ranking tags, one watcher pass (the first ranking: a "
        "page of the 50 runs that ended last, then a threshold search `metrics.avg_test_r2 >= cutoff` from "
        "a cutoff estimated on it, ordered on the server and cut at 21 runs; no scan), then the guide's way "
        "on the same runs, side by side "
        "through the same counting proxy. The boards are asserted equal, and the tags identical to a full "
        "ranking's (the guide's `model_rank`, `top_10`, `production_candidate` on exactly its runs; its "
        "rewrite changes nothing; compared where the table says *board and tags*). The ranked/unranked counts are then completed by paged counts "
        "(5 pages of 1,000 runs per pass) in the passes that follow; then a pass with nothing new.",
        "",
        "| backend | runs | watcher: calls, runs read, time | guide: calls, runs read, time | less time "
        "| same as the guide's | count passes after: passes, calls, time | idle pass after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b, res in backends.items():
        for n, r in res["rerank"].items():
            f = r["first_pass"]
            g = f.get("guide")
            counts = f.get("count_passes", [])
            guide = f"{g['calls']['total']}, {g['runs_read']:,}, {_ms(g['seconds'])}" if g else "–"
            ratio = _ratio(g["seconds"], f["seconds"]) if g else "–"
            count = (
                f"{len(counts)}, {sum(c['calls']['total'] for c in counts)}, {_ms(sum(c['seconds'] for c in counts))}"
                if counts
                else "0"
            )
            idle = r["idle_pass"]
            out.append(
                f"| {BACKEND_NAMES[b]} | {int(n):,} | {f['calls']['total']}, {f.get('runs_read', 0):,}, "
                f"{_ms(f['seconds'])} | {guide} | {ratio} | {'board and tags' if f.get('tags_identical') else 'board'} "
                f"| {count} | "
                f"{idle['calls']['total']} calls ({idle['calls']['writes']} writes), {_ms(idle['seconds'])} |"
            )
    out += ["", "Watcher calls of a first ranking, by endpoint:", ""]
    for b, res in backends.items():
        for n, r in res["rerank"].items():
            f = r["first_pass"]
            searches = "; ".join(
                f"{k} ×{v['calls']:.0f} ({v['runs']:,.0f} runs, {_ms(v['seconds'])})"
                for k, v in sorted(f.get("searches", {}).items())
            )
            out.append(
                f"- {BACKEND_NAMES[b]}, {int(n):,} runs: {_endpoints(f['calls'])}"
                + (f". Searches: {searches}" if searches else "")
            )
    return [*out, ""]


def watcher_sections(w: dict[str, Any]) -> list[str]:
    plan = w["plan"]
    backends = _ordered(w)
    out = first_ranking_section(backends)
    idle_backends = {b: res for b, res in backends.items() if res.get("idle")}
    out += ["## Watcher: idle pass", ""]
    if idle_backends:
        out += [
            f"{plan['idle_experiments']} experiments × {plan['idle_runs']} finished runs, all watched by one "
            "rule; a first pass ranks them all, then passes with nothing new. *Right after* is the pass that "
            "follows the first pass; the others are the ones after it. Calls are exact (counting proxy); the "
            "holder check (`tags.model_rank LIKE '%'` over the batch of 100 experiments, every pass) is timed "
            "inside the pass.",
            "",
            "| backend | first pass (ranks all): calls, time | right after: calls (reads / writes), time "
            f"| next {plan['idle_reps'] - 1} passes: calls, median time | endpoints | holder check (right after) |",
            "|---|---|---|---|---|---|",
        ]
        for b, res in idle_backends.items():
            idle = res["idle"]
            passes = idle["idle_passes"]
            first, after, rest = idle["first_pass"], passes[0], passes[1:]
            rest_calls = sorted({p["calls"]["total"] for p in rest})
            out.append(
                f"| {BACKEND_NAMES[b]} | {first['calls']['total']}, {_ms(first['seconds'])} "
                f"| {after['calls']['total']} ({after['calls']['reads']} / {after['calls']['writes']}), "
                f"{_ms(after['seconds'])} | {'–'.join(str(c) for c in rest_calls) or '–'}, "
                f"{_ms(median([p['seconds'] for p in rest]))} | {_endpoints(after['calls'])} | {_holder_cell(after)} |"
            )
        out.append("")
    sizes = list(next(iter(backends.values()))["rerank"])
    out += [
        "The pass with nothing new over one experiment of each size (the pass after its count passes), "
        "calls and time, and the holder check's share:",
        "",
        "| backend | " + " | ".join(f"{int(n):,} runs" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for b, res in backends.items():
        cells = [
            f"{r['idle_pass']['calls']['total']} calls, {_ms(r['idle_pass']['seconds'])}; holder check "
            f"{_holder_cell(r['idle_pass'])}"
            for r in res["rerank"].values()
        ]
        out.append(f"| {BACKEND_NAMES[b]} | " + " | ".join(cells) + " |")
    out += ["", "## Watcher: re-rank after one new run, vs the guide's way", ""]
    out += [
        "The experiment above, ranked and counted. Then, repeatedly: one "
        "new finished run is logged (uncounted), one watcher pass runs, then the guide's way ranks the same "
        "experiment (`get_experiment_by_name`, every page of 1,000 runs, sort in Python, `set_tag` ×23). "
        "*lead*: the new run has the best value (all ranks shift); *off board*: it is worse than the 10th. "
        "Both boards are checked against the expected one after each step. Reads/writes are exact "
        "calls per re-rank, the holder check included; *runs read* is how many runs the searches returned; "
        "times are medians; *changed runs* counts the runs whose ranking tags changed (the floor for writes).",
        "",
    ]
    for b, res in backends.items():
        out += [
            f"### {BACKEND_NAMES[b]}",
            "",
            "| runs | new run | reps | watcher reads / writes | watcher time | holder check | changed runs "
            "| guide reads / writes | guide time (n) | runs read: watcher / guide | fewer read calls | less time |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for n, r in res["rerank"].items():
            # The guide does the same work wherever the new run lands: one median per size.
            g_rows, g_n = _guide_rows(r)
            g_t = median([x["guide"]["seconds"] for x in g_rows])
            g_reads = median([x["guide"]["calls"]["reads"] for x in g_rows])
            for scenario in ("lead", "off_board"):
                rows = r[scenario]
                if not rows:
                    continue
                w_t = median([x["watcher"]["seconds"] for x in rows])
                w_reads = median([x["watcher"]["calls"]["reads"] for x in rows])
                h_t = median([_search(x["watcher"], HOLDERS, "seconds") for x in rows])
                h_runs = median([_search(x["watcher"], HOLDERS, "runs") for x in rows])
                out.append(
                    f"| {int(n):,} | {scenario.replace('_', ' ')} | {len(rows)} | "
                    f"{_calls(rows, 'watcher', 'reads')} / {_calls(rows, 'watcher', 'writes')} | {_ms(w_t)} | "
                    f"{h_runs:,.0f} runs, {_ms(h_t)} | "
                    f"{_changed(rows)} | {_calls(g_rows, 'guide', 'reads')} / {_calls(g_rows, 'guide', 'writes')} "
                    f"| {_ms(g_t)} ({g_n}) | {_runs_read(rows, g_rows)} | {_ratio(g_reads, w_reads)} "
                    f"| {_ratio(g_t, w_t)} |"
                )
        out += [
            "",
            "Watcher calls per re-rank: "
            + "; ".join(
                f"{s.replace('_', ' ')}: {_endpoints(next(iter(res['rerank'].values()))[s][0]['watcher']['calls'])}"
                for s in ("lead", "off_board")
            )
            + ".",
            "",
        ]
    out += growth_section(backends)
    return out


def _guide_rows(r: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The guide's re-rank runs of one size, or (where it was not rerun) its run beside the
    first ranking, which does the same work on one run fewer."""
    rows = [x for x in r["lead"] + r["off_board"] if x.get("guide")]
    if rows:
        return rows, str(len(rows))
    return [{"guide": r["first_pass"]["guide"]}], "first ranking's"


def _runs_read(rows: Sequence[dict[str, Any]], g_rows: Sequence[dict[str, Any]]) -> str:
    w = median([x["watcher"].get("runs_read", float("nan")) for x in rows])
    g = median([x["guide"].get("runs_read", float("nan")) for x in g_rows])
    return f"{w:,.0f} / {g:,.0f}"


def _changed(rows: Sequence[dict[str, Any]]) -> str:
    values = sorted({r["changed_runs"] for r in rows})
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def growth_section(backends: dict[str, Any]) -> list[str]:
    out = [
        "## How the costs grow with the number of runs",
        "",
        "| backend | runs | watcher re-rank (lead): calls, time | watcher (off board): calls, time | "
        "guide: calls, time |",
        "|---|---|---|---|---|",
    ]
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for b, res in backends.items():
        for n, r in res["rerank"].items():
            cells = []
            for scenario in ("lead", "off_board"):
                rows = r[scenario]
                t = median([x["watcher"]["seconds"] for x in rows])
                cells.append(f"{median([x['watcher']['calls']['total'] for x in rows]):.0f}, {_ms(t)}")
                key = f"watcher, {scenario.replace('_', ' ')} ({BACKEND_NAMES[b]})"
                series.setdefault(key, {}).setdefault("t", []).append((int(n), t))
                calls = median([x["watcher"]["calls"]["total"] for x in rows])
                series[key].setdefault("c", []).append((int(n), calls))
            g_rows, _ = _guide_rows(r)
            g_t = median([x["guide"]["seconds"] for x in g_rows])
            g_c = median([x["guide"]["calls"]["total"] for x in g_rows])
            key = f"guide's way ({BACKEND_NAMES[b]})"
            series.setdefault(key, {}).setdefault("t", []).append((int(n), g_t))
            series[key].setdefault("c", []).append((int(n), g_c))
            out.append(
                f"| {BACKEND_NAMES[b]} | {int(n):,} | {cells[0]} | {cells[1]} | {g_c:.0f}, {_ms(g_t)} |"
            )
    plot(series)
    out += ["", f"![re-rank wall time vs runs]({PLOT.relative_to(ROOT).as_posix()})", ""]
    return out


def plot(series: dict[str, dict[str, list[tuple[int, float]]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    for label, data in sorted(series.items()):
        style = "--" if "guide" in label else "-"
        marker = "s" if "PostgreSQL" in label else "o"
        for axis, key in ((ax, "t"), (ax2, "c")):
            points = sorted(data[key])
            axis.plot([p[0] for p in points], [p[1] for p in points], style, marker=marker, label=label)
    for axis in (ax, ax2):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("finished runs in the experiment")
        axis.grid(True, which="both", alpha=0.3)
    ax.set_ylabel("seconds")
    ax.set_title("Wall time of one re-rank after one new run")
    ax2.set_ylabel("tracking calls (reads + writes)")
    ax2.set_title("Tracking calls of one re-rank")
    ax.legend(fontsize=8)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def trainer_section(t: dict[str, Any]) -> list[str]:
    sweeps = t["sweeps"]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for s in sweeps:
        groups.setdefault((s["side"], s["jobs"]), []).append(s)
    plain = groups.get(("plain", 1), [])
    plain_tpm = median([s["trials_per_minute"] for s in plain])
    out = [
        "## Trainer: Podium vs a plain loop",
        "",
        f"The built-in sample (150 features, 21 walk-forward folds), {t['trials']} trials per sweep, "
        f"{t['reps']} sweeps per side, alternating; one `mlflow server` ({BACKEND_NAMES[t['backend']]}) behind the "
        "counting proxy. Trials/min over the whole sweep (data loading and process start-up included). "
        "The plain loop: per fold `XGBRegressor.fit` (same fixed settings: hist, max_bin 64, one thread), "
        "sklearn `permutation_importance` on the last fold's test window, one `log_metric` per value, the two "
        "importance files via `log_artifact`, then `mlflow.xgboost.log_model` with signature and input example.",
        "",
        "| side | processes | trials/min (median) | vs plain loop | tracking calls per trial (+ per sweep) "
        "| artifact requests per sweep |",
        "|---|---|---|---|---|---|",
    ]
    for (side, jobs), rows in sorted(groups.items(), key=lambda kv: (kv[0][0] != "plain", kv[0][1])):
        tpm = median([s["trials_per_minute"] for s in rows])
        cpt = sorted({f"{s['per_trial_calls']:g} (+{s['sweep_calls']})" for s in rows})
        art = sorted({s["artifact_requests"] for s in rows})
        label = "plain loop" if side == "plain" else "Podium (`trainer.sweep.run_sweep`)"
        out.append(
            f"| {label} | {jobs} | {tpm:.2f} | {_ratio(tpm, plain_tpm)} | "
            f"{'–'.join(str(c) for c in cpt)} | {'–'.join(str(a) for a in art)} |"
        )
    out += ["", "Tracking calls of one sweep, by endpoint:", ""]
    for (side, jobs), rows in sorted(groups.items()):
        out.append(f"- {side} (jobs={jobs}), {t['trials']} trials: {_endpoints(rows[0]['calls'])}")
    checks = t.get("checks", [])
    if checks:
        same = all(c["same"] for c in checks)
        worst = max(c["max_rel_diff"] for c in checks)
        compared = sum(c["compared"] for c in checks)
        only = sorted({k for c in checks for k in c["one_side_only"]})
        out += [
            "",
            f"Same numbers: **{'yes' if same else 'NO'}** — {len(checks)} Podium runs compared trial by trial with the "
            f"plain loop's, {compared} metric values in all, largest relative difference {worst:.1e}"
            + (f"; keys on one side only (importance ties at exactly 0): {', '.join(only)}" if only else "")
            + ".",
        ]
    out.append("")
    return out


def _same(checks: Sequence[dict[str, Any]], versus: str) -> str:
    if not checks:
        return ""
    same = all(c["same"] for c in checks)
    worst = max(c["max_rel_diff"] for c in checks)
    compared = sum(c["compared"] for c in checks)
    return (
        f"Same numbers: **{'yes' if same else 'NO'}** — {len(checks)} runs compared trial by trial with "
        f"{versus}, {compared} metric values in all, largest relative difference {worst:.1e}."
    )


def ray_section(r: dict[str, Any]) -> list[str]:
    med = r["median_trials_per_minute"]
    rows = r["sweeps"]
    out = [
        "## Trainer: `--backend ray` vs `--backend local`",
        "",
        f"The built-in sample, default trial settings, {r['trials']} trials per sweep, sides alternating, "
        "one `mlflow server` (sqlite). Ray sweeps join one local Ray cluster with "
        f"{max(row['jobs'] for row in rows)} CPU(s) started once "
        + (
            f"({r['cluster_start_seconds']:.0f} s, not counted)"
            if r["cluster_start_seconds"] >= 1
            else "(not counted)"
        )
        + "; trials/min over the whole sweep (data loading, "
        "worker start-up, the driver's connect included). Load average at the start: "
        f"{r['machine']['loadavg_at_start']:.1f} on 2 cores shared with other work.",
        "",
        "| jobs | local trials/min | Ray trials/min | Ray / local |",
        "|---|---|---|---|",
    ]
    jobs_list = sorted({row["jobs"] for row in rows if row["side"] == "local"})
    for jobs in jobs_list:
        local, ray = med[f"local_j{jobs}"], med[f"ray_j{jobs}"]
        out.append(f"| {jobs} | {local:.2f} | {ray:.2f} | {_ratio(ray, local)} |")
    if len(jobs_list) >= 2:
        lo, hi = jobs_list[0], jobs_list[-1]
        gain_local = med[f"local_j{hi}"] / med[f"local_j{lo}"]
        gain_ray = med[f"ray_j{hi}"] / med[f"ray_j{lo}"]
        out += ["", f"Gain from {lo} to {hi} workers: local {gain_local:.2f}×, Ray {gain_ray:.2f}×."]
    if all("cpu_seconds" in row for row in rows):
        out += [
            "",
            "Every sweep, in the order run (CPU: this process and its reaped children, so local pool "
            "workers and an own local Ray count, the shared cluster's actors do not):",
            "",
            "| side | jobs | wall s | trials/min | CPU s | load average before → after |",
            "|---|---|---|---|---|---|",
        ]
        out += [
            f"| {row['side']} | {row['jobs']} | {row['seconds']:.1f} | {row['trials_per_minute']:.2f} | "
            f"{row['cpu_seconds']:.1f} | {row['load_average_before']:.1f} → {row['load_average_after']:.1f} |"
            for row in rows
        ]
    own = [row for row in rows if row["side"] == "ray_own_cluster"]
    for row in own:
        out += [
            "",
            f"A Ray sweep that starts and stops its own local Ray (no address), jobs={row['jobs']}: "
            f"{row['trials_per_minute']:.2f} trials/min ({row['seconds']:.0f} s).",
        ]
    out += ["", _same(r.get("checks", []), "the first local sweep's"), ""]
    return out


def optuna_section(o: dict[str, Any]) -> list[str]:
    rows = o["sweeps"]
    base = next(row for row in rows if row["side"] == "optuna")
    out = [
        "## Trainer: Podium vs Optuna with MLflowCallback",
        "",
        f"Optuna {o['optuna']} with optuna-integration's `MLflowCallback` and `track_in_mlflow`, the same "
        "walk-forward objective logging the same content (per-fold metrics with step = fold, averages, "
        "`importance_*`, the importance files and charts, SHAP, the model with signature), Podium's sampled "
        f"hyperparameters enqueued; {o['trials']} trials per side, one `mlflow server` (sqlite) behind the counting proxy. "
        "`track_in_mlflow` holds a lock for the whole objective, so Optuna's `n_jobs` cannot run trials in "
        "parallel: it runs with one.",
        "",
        "| side | processes | trials/min (median) | vs Optuna | trials per CPU-minute | vs Optuna "
        "| tracking calls per trial (+ per sweep) | artifact requests |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["side"], row["jobs"]), []).append(row)
    base_tpm = median([r["trials_per_minute"] for r in groups[("optuna", 1)]])
    base_cpu = median([r.get("trials_per_cpu_minute", float("nan")) for r in groups[("optuna", 1)]])
    for (side, jobs), group in sorted(groups.items(), key=lambda kv: (kv[0][0] != "optuna", kv[0][1])):
        label = "Optuna + MLflowCallback" if side == "optuna" else "Podium"
        tpm = median([r["trials_per_minute"] for r in group])
        cpu = median([r.get("trials_per_cpu_minute", float("nan")) for r in group])
        row = group[0]
        out.append(
            f"| {label} | {jobs} | {tpm:.2f} | {_ratio(tpm, base_tpm)} | {cpu:.2f} | {_ratio(cpu, base_cpu)} | "
            f"{row['per_trial_calls']:g} (+{row['sweep_calls']}) | {row['artifact_requests']} |"
        )
    out += ["", f"- Optuna's calls: {_endpoints(base['calls'])}"]
    out += ["", _same(o.get("checks", []), "Optuna's"), ""]
    return out


def profile_section(p: dict[str, Any]) -> list[str]:
    parts = p["parts_seconds"]
    total = p["profiled_seconds"] + p["process_start_seconds"]
    names = {
        "xgboost": "XGBoost's own work (`xgboost.train`, `Booster` predicts, each window's `QuantileDMatrix`)",
        "data": "data outside XGBoost: loading, checks, features",
        "importance_outside_xgboost": "importance outside XGBoost (shuffles, R², split paths, tables)",
        "logging_outside_xgboost": "logging: model, batch, artifacts, charts",
        "scaling_outside_xgboost": "the target's scale: boosters rescaled to the data's units",
        "other": "the rest (run creation, the sweep loop, fold scores)",
    }
    out = [
        "## Trainer: where a sweep's time goes",
        "",
        f"One `--jobs 1` sweep of {p['trials']} trials on the built-in sample under pyinstrument "
        f"({p['profiled_seconds']:.1f} s; the same sweep unprofiled: {p['unprofiled_seconds']:.1f} s), plus "
        f"process start (a fresh interpreter importing the trainer, {p['process_start_seconds']:.1f} s)."
        + (
            f" The unprofiled sweep used {p['unprofiled_cpu_seconds']:.1f} s of CPU in this process; load "
            f"average {p['load_average_before']:.1f} before, {p['load_average_after']:.1f} after."
            if "unprofiled_cpu_seconds" in p
            else ""
        ),
        "",
        "| part | seconds | share |",
        "|---|---|---|",
    ]
    for key, label in names.items():
        if key in parts:
            out.append(f"| {label} | {parts[key]:.1f} | {parts[key] / total:.0%} |")
    out.append(
        f"| process start | {p['process_start_seconds']:.1f} | {p['process_start_seconds'] / total:.0%} |"
    )
    out += [
        "",
        f"Outside XGBoost's own training and prediction: **{p['outside_xgboost_share']:.0%}** of the wall time"
        + (
            f" ({p['outside_xgboost_share_matrices_apart']:.0%} with each window's `QuantileDMatrix`, "
            f"{p['xgboost_by_phase_seconds'].get('data', 0.0):.1f} s, counted as data instead)."
            if "outside_xgboost_share_matrices_apart" in p
            else "."
        ),
        "",
        "Per trial, with the once-per-sweep costs (data, process start) set apart — what a longer sweep "
        f"tends to: **{p.get('steady_state_outside_xgboost_share', float('nan')):.0%}** outside XGBoost. "
        f"XGBoost's time by phase: {', '.join(f'{k} {v:.1f} s' for k, v in p.get('xgboost_by_phase_seconds', {}).items())}.",
        "",
    ]
    return out


def render() -> str:
    (w, runs), t = merged_watcher(), _load("trainer")
    lines: list[str] = [BEGIN, ""]
    m = (w or t or {}).get("machine")
    if m:
        lines += machine_section(m, runs)
    if w:
        lines += watcher_sections(w)
    if t:
        lines += trainer_section(t)
    for name, section in (("ray", ray_section), ("optuna", optuna_section), ("profile", profile_section)):
        found = _load(name)
        if found:
            lines += section(found)
    lines.append(END)
    return "\n".join(lines)


HEADER = """# Benchmarks

Run them all with `scripts/bench.sh` (about 20 minutes on a 2-core machine); figures below are
written by `bench/report.py` from `bench/results/*.json`. Goals: DESIGN.md, "Performance goals".

"""


def write(path: Path) -> None:
    block = render()
    text = path.read_text() if path.exists() else HEADER
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    elif "\n## " in text:
        # First time: the figures go before the first hand-written section (e.g. importance).
        head, tail = text.split("\n## ", 1)
        text = head.rstrip("\n") + "\n\n" + block + "\n\n## " + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    write(Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
