"""Print the README's benchmark section from the results the benchmarks saved.

    python bench/report.py > /tmp/section.md     # then paste it into README.md

Reads ``bench/results_x372.json``, ``bench/ingest_floor.json``, ``bench/twin_results.json``,
``bench/signal_results.json`` (copies of the latest ``bench/out`` results),
``bench/backtest_ceiling.json`` and ``bench/backtest_results.json`` (``jumeau evaluate forecasts
--format json``), so no figure in the README is typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
LABELS = {"pr": "PR", "qrs": "QRS", "qt": "QT", "qtc_bazett": "QTc"}


def _floor_rows(floor: dict) -> list[tuple[str, str, str, str]]:
    """``bench/ingest_floor.py``'s medians: jumeau and the floor of any ingest into this
    layout, against meds_etl in the same run."""
    seconds, speed = floor["median_seconds"], floor["speed_vs_meds_etl"]
    peer = f"meds_etl_omop {seconds['meds_etl_omop']:.2f} s"
    label = f"Eunomia x{floor['dataset']['replicas']}, median of {len(floor['runs']['meds_etl_omop'])} runs"
    names = {
        "jumeau ingest": f"OMOP ingest, {label}",
        "floor (Arrow + Parquet, hashed keys)": "its floor: one pass, no checks (`ingest_floor.py`)",
        "floor without the Parquet copy": "the floor without the Parquet copy",
        "floor without the record hashes": "the floor without the keyed record hashes",
    }
    return [
        (name, f"{seconds[key]:.2f} s", peer, f"{speed[key]:.2f}×") for key, name in names.items()
    ]


def main() -> None:
    r = json.loads((HERE / "results_x372.json").read_text())
    t = json.loads((HERE / "twin_results.json").read_text())
    sig = json.loads((HERE / "signal_results.json").read_text())
    backtest = json.loads((HERE / "backtest_results.json").read_text())
    floor = json.loads((HERE / "ingest_floor.json").read_text())
    ra = r["ratios"]
    jr, mr = r["jumeau_reads"], r["meds_reader_reads"]
    peer_total = r["meds_etl_ingest"]["seconds"] + r["meds_reader_convert_seconds"]
    rows = [
        (
            "OMOP ingest (→ Parquet + random-access layout)",
            f"{r['jumeau_ingest']['seconds']:.0f} s",
            f"meds_etl_omop {r['meds_etl_ingest']['seconds']:.0f} s",
            f"**{ra['ingest_speedup_vs_meds_etl']:.2f}×** (target ≥ 3×: not met)",
        ),
        (
            "same, against the peer's equivalent (meds_etl + meds_reader_convert)",
            f"{r['jumeau_ingest']['seconds']:.0f} s",
            f"{peer_total:.0f} s",
            f"{ra['ingest_speedup_vs_meds_etl_plus_meds_reader_convert']:.2f}× faster",
        ),
        *_floor_rows(floor),
        (
            "ingest peak memory (max RSS)",
            f"{r['jumeau_ingest']['peak_mib']:.0f} MiB",
            f"{r['meds_etl_ingest']['peak_mib']:.0f} MiB",
            f"{ra['ingest_peak_memory_vs_meds_etl']:.2f}×",
        ),
        *(
            [
                (
                    "MEDS import of the same data (jumeau's MEDS export → random-access store)",
                    f"{r['jumeau_meds_import']['seconds']:.0f} s",
                    f"meds_reader_convert {r['meds_reader_convert_seconds']:.0f} s",
                    f"{ra['meds_import_speedup_vs_meds_reader_convert']:.2f}× faster",
                )
            ]
            if "jumeau_meds_import" in r
            else []
        ),
        (
            "median single-subject timeline read, warm (Arrow)",
            f"{jr['arrow']['median_us']:.1f} µs",
            f"meds_reader {mr['median_us']:.1f} µs",
            f"{ra['timeline_read_speedup_vs_meds_reader_arrow']:.2f}× faster",
        ),
        (
            "same, cold page cache",
            f"{jr['arrow_cold']['median_us']:.1f} µs",
            f"{mr['cold']['median_us']:.1f} µs",
            f"{ra['cold_timeline_read_speedup_vs_meds_reader_arrow']:.2f}× faster",
        ),
        (
            "same, as a Polars frame",
            f"{jr['polars']['median_us']:.0f} µs",
            "",
            f"{ra['timeline_read_speedup_vs_meds_reader_polars']:.2f}×",
        ),
        (
            "full scan (count, sum, distinct codes)",
            f"{r['jumeau_scan']['events_per_second'] / 1e6:.0f} M events/s",
            f"meds_etl's Parquet {r['meds_etl_scan']['events_per_second'] / 1e6:.0f} M events/s",
            f"{ra['scan_speed_vs_meds_etl_output']:.2f}×",
        ),
    ]
    for name, rec in sig["records"].items():
        zoom = rec["window_ms_median_by_zoom"]
        rows += [
            (
                f"R-peak F1, MIT-BIH {name} (150 ms)",
                f"{rec['f1']:.4f}",
                f"NeuroKit2 default {rec['neurokit2_f1']:.4f}",
                f"{rec['detector_speedup_vs_neurokit2']:.2f}× faster ({rec['detector_times_real_time']:,.0f}× real time)",
            ),
            (
                f"WFDB ingest of {name} (store, pyramid, events)",
                f"{rec['ingest_seconds']:.2f} s",
                f"wfdb.rdrecord {rec['wfdb_rdrecord_seconds']:.3f} s",
                f"{rec['ingest_vs_rdrecord']:.0f}× a plain read",
            ),
            (
                f"window read, 2,000 points, {name}",
                f"{min(zoom.values()):.2f}–{max(zoom.values()):.2f} ms over " + ", ".join(zoom),
                "",
                "",
            ),
        ]
    rows.append(
        (
            "EDF ingest, 139 channels",
            f"{sig['edf']['ingest_seconds']:.2f} s",
            f"pyedflib read {sig['edf']['pyedflib_read_seconds']:.3f} s",
            f"{sig['edf']['ingest_vs_read']:.0f}× a plain read",
        )
    )
    delineation = sig.get("delineation", {})
    if delineation:
        rows.append(
            (
                "12-lead intervals vs the electrocardiograph (DICOM ECG)",
                ", ".join(f"{LABELS[k]} {v['jumeau_ms']:.0f}" for k, v in delineation.items())
                + " ms",
                "Mortara device "
                + ", ".join(f"{LABELS[k]} {v['device_ms']:.0f}" for k, v in delineation.items())
                + " ms",
                "largest gap "
                + f"{max(abs(v['jumeau_ms'] - v['device_ms']) for v in delineation.values()):.0f} ms",
            )
        )
    sleep = sig.get("sleep", {})
    if "spectral" in sleep:
        ours, peer = sleep["spectral"], sleep.get("yasa")
        rows.append(
            (
                f"sleep staging, simulated night on a real hypnogram ({ours['epochs']} epochs)",
                f"accuracy {ours['accuracy']:.1%}, kappa {ours['kappa']:.2f}",
                f"YASA {peer['accuracy']:.1%}, kappa {peer['kappa']:.2f}" if peer else "",
                f"{peer['seconds'] / ours['seconds']:.0f}× faster" if peer else "",
            )
        )
    print("| measure | jumeau | peer | ratio |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print(
        f"Dataset: Eunomia replicated {r['replicas']} times with offset ids = {r['dataset']['subjects']:,} subjects, "
        f"{r['dataset']['source_rows']:,} OMOP rows, {r['jumeau_ingest']['events']:,} events."
    )
    print(
        f"Twins: state and risks of all {t['twins_built']:,} Eunomia subjects in {t['seconds']:.1f} s "
        f"({t['twins_per_second']:.0f} twins/s, one core); after one new batch the incremental update rebuilds "
        f"{t['incremental_update_twins']} twin in {t['incremental_update_seconds'] * 1000:.0f} ms against "
        f"{t['registry_full_build_seconds']:.1f} s for all ({t['rebuild_vs_incremental_ratio']:.0f}× cheaper)."
    )
    if "backtest_forecasts_per_second_batched" in t:
        print(
            f"Back-test forecasts ({t['backtest_forecasts']:,} generated blood-pressure series): "
            f"{t['backtest_forecasts_per_second_batched']:,.0f}/s made in batches against "
            f"{t['backtest_forecasts_per_second_one_at_a_time']:,.0f}/s one at a time "
            f"({t['backtest_batched_vs_one_at_a_time_ratio']:.0f}× faster)."
        )
    if "long_series_speedup" in t:
        print(
            f"One patient's series of {t['long_series_observations']:,} observations (an ICU stay's "
            f"heart rates) filtered in {t['long_series_filter_seconds'] * 1000:.0f} ms, against "
            f"{t['long_series_array_filter_seconds'] * 1000:.0f} ms stepping arrays "
            f"({t['long_series_speedup']:.0f}× faster)."
        )
    backtest_table(backtest)


def backtest_table(result: dict) -> None:
    print()
    print(
        f"Forecast back-test (`jumeau evaluate forecasts`, 20 shared Synthea patients, horizon {result['horizon']}, "
        f"cutoffs {result['cutoff'][:4]}…{result['cutoff'][-19:-15]} pooled; `bench/backtest_results.json`):"
    )
    print()
    print(
        "| variable | forecasts | MAE twin | MAE carry-forward | MAE change | 95% interval "
        "(patients resampled) | 80% covered | 95% covered |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, v in sorted(result["variables"].items(), key=lambda kv: -kv[1]["n"]):
        ci = v.get("improvement_ci95")
        change = f"{round(-ci[1] * 100):+d}% to {round(-ci[0] * 100):+d}%" if ci else ""
        print(
            f"| {name} | {v['n']} | {v['mae']:.3g} | {v['mae_carry_forward']:.3g} | "
            f"{-v['improvement_vs_carry_forward']:+.0%} | {change} | {v['coverage_80']:.0%} | "
            f"{v['coverage_95']:.0%} |"
        )
    print()
    main = [n for n, v in result["variables"].items() if v["n"] >= 30]
    met = [n for n in main if (result["variables"][n]["improvement_vs_carry_forward"] or 0) >= 0.10]
    print(
        "Target ≥ 10% better than carry-forward (variables with 30+ forecasts): met for "
        + ", ".join(met)
        + "; not met for "
        + ", ".join(n for n in main if n not in met)
        + "."
    )
    ceiling_file = HERE / "backtest_ceiling.json"
    if ceiling_file.exists():
        ceiling = json.loads(ceiling_file.read_text())
        unmet = [n for n in main if n not in met and n in ceiling]
        if unmet:
            print(
                "Their ceiling (`python bench/backtest_ceiling.py`, `bench/backtest_ceiling.json`): "
                "the best this model reaches when its noise, drift, slope and stacking weights are "
                f"chosen with hindsight on the very outcomes scored ({ceiling[unmet[0]]['settings_tried']} "
                "settings a variable: up to the grid's resolution, more than any fit, which never "
                "sees them, can reach) is "
                + ", ".join(f"{ceiling[n]['ceiling_improvement']:+.1%} for {n}" for n in unmet)
                + " (fitted: "
                + ", ".join(f"{ceiling[n]['fitted_improvement']:+.1%}" for n in unmet)
                + ")."
            )
    variables = result["variables"].values()
    total = sum(v["n"] for v in variables)
    pooled = {
        level: sum(v[f"coverage_{level}"] * v["n"] for v in variables) / total for level in (80, 95)
    }
    print(
        f"Interval calibration, all {total} forecasts pooled: 80% intervals cover "
        f"{pooled[80]:.1%}, 95% intervals cover {pooled[95]:.1%} (targets 77–83% and 93–97%)."
    )
    print()
    order = ("1", "2-3", "4-7", "8+")
    for name in ("sbp", "dbp"):
        history = result["variables"].get(name, {}).get("mae_by_history", {})
        if history:
            steps = ", ".join(
                f"{k} prior: {history[k]['mae']:.1f} ({history[k]['n']})"
                for k in order
                if k in history
            )
            print(
                f"{name} MAE by how many observations the patient already had (forecasts): {steps}."
            )
    print()
    print(
        "The same forecasts made seeing only the patient's last 1, 2 or 4 observations, or all of "
        "them (forecasts of patients with 4+ observations; `mae_by_own_observations`):"
    )
    print()
    print("| variable | forecasts | last 1 | last 2 | last 4 | all | carry-forward |")
    print("|---|---|---|---|---|---|---|")
    for name, v in sorted(result["variables"].items(), key=lambda kv: -kv[1]["n"]):
        curve = v.get("mae_by_own_observations")
        if curve and curve["n"] >= 30:
            print(
                f"| {name} | {curve['n']} | "
                + " | ".join(f"{curve[k]:.3g}" for k in ("1", "2", "4", "all", "carry_forward"))
                + " |"
            )


if __name__ == "__main__":
    main()
