"""Signal benchmark: ingest against the readers, window reads at every zoom, R peaks vs NeuroKit2.

    python bench/bench_signals.py [--records tests/data/wfdb/100 ...]

All figures are ratios from one run on this machine; results go to ``bench/out/signal_results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data"


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _neurokit(nk, signal, fs):
    return nk.ecg_peaks(nk.ecg_clean(signal, sampling_rate=fs), sampling_rate=fs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", nargs="*", default=[str(DATA / "wfdb" / "100")])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jumeau-bench-signals-"))
    os.environ["JUMEAU_KEY_DIR"] = str(work / "keys")
    import neurokit2 as nk
    import pyedflib
    import wfdb

    import jumeau
    from jumeau.ingest.edf import ingest_edf
    from jumeau.ingest.wfdb import ingest_wfdb
    from jumeau.signals.ecg import BEAT_SYMBOLS, detect_r_peaks, score_beats

    results: dict = {"records": {}}
    start = datetime(2020, 1, 1, 8)
    for path in args.records:
        store = jumeau.init(work / f"store-{Path(path).name}")
        t0 = time.perf_counter()
        ingest_wfdb(store, path, start=start)
        ingest_s = time.perf_counter() - t0
        read_s = best_of(partial(wfdb.rdrecord, path), 3)
        (record,) = store.signal_records()
        zooms = {}
        for seconds in (10, 60, 600, record.samples / record.fs):
            lats = []
            for k in range(50):
                offset = (k * 37.0) % max(1.0, record.samples / record.fs - seconds)
                a = start + timedelta(seconds=offset)
                t = time.perf_counter()
                record.window(0, a, a + timedelta(seconds=seconds), points=2000)
                lats.append(time.perf_counter() - t)
            zooms[f"{seconds:g}s"] = statistics.median(lats) * 1000
        sig = wfdb.rdrecord(path, channels=[0])
        ann = wfdb.rdann(path, "atr")
        ref = np.array(
            [s for s, y in zip(ann.sample, ann.symbol, strict=True) if y in BEAT_SYMBOLS]
        )
        ours_s = best_of(partial(detect_r_peaks, sig.p_signal[:, 0], sig.fs), 3)
        ours = score_beats(ref, detect_r_peaks(sig.p_signal[:, 0], sig.fs), sig.fs)
        theirs_s = best_of(partial(_neurokit, nk, sig.p_signal[:, 0], sig.fs), 3)
        _, info = nk.ecg_peaks(
            nk.ecg_clean(sig.p_signal[:, 0], sampling_rate=sig.fs), sampling_rate=sig.fs
        )
        theirs = score_beats(ref, info["ECG_R_Peaks"], sig.fs)
        duration = sig.sig_len / sig.fs
        results["records"][Path(path).name] = {
            "ingest_seconds": ingest_s,
            "wfdb_rdrecord_seconds": read_s,
            "ingest_vs_rdrecord": ingest_s / read_s,
            "window_ms_median_by_zoom": zooms,
            "f1": ours.f1,
            "neurokit2_f1": theirs.f1,
            "detector_times_real_time": duration / ours_s,
            "neurokit2_times_real_time": duration / theirs_s,
            "detector_speedup_vs_neurokit2": theirs_s / ours_s,
        }
    edf = DATA / "edf" / "mne_test.edf"
    store = jumeau.init(work / "store-edf")
    t0 = time.perf_counter()
    ingest_edf(store, edf)
    edf_ingest = time.perf_counter() - t0

    def read_all():
        reader = pyedflib.EdfReader(str(edf))
        [reader.readSignal(i) for i in range(reader.signals_in_file)]
        reader.close()

    results["edf"] = {"ingest_seconds": edf_ingest, "pyedflib_read_seconds": best_of(read_all, 3)}
    results["edf"]["ingest_vs_read"] = (
        results["edf"]["ingest_seconds"] / results["edf"]["pyedflib_read_seconds"]
    )
    results["delineation"] = _delineation()
    results["sleep"] = _sleep(work)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "signal_results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def _delineation() -> dict:
    """Intervals of the 12-lead DICOM ECG against the electrocardiograph's own measurements."""
    import pydicom

    from jumeau.signals.ecg import delineate, detect_r_peaks

    ds = pydicom.dcmread(DATA / "dicom" / "waveform_ecg.dcm")
    device = {
        a.ConceptNameCodeSequence[0].CodeMeaning: float(a.NumericValue)
        for a in ds.WaveformAnnotationSequence
        if "NumericValue" in a and "ConceptNameCodeSequence" in a
    }
    leads = ds.waveform_array(0).T / 1000
    ours = delineate(leads, 1000, detect_r_peaks(leads[1], 1000))
    names = {
        "pr": "PR Interval",
        "qrs": "QRS Duration",
        "qt": "QT Interval",
        "qtc_bazett": "QTc Interval",
    }
    return {k: {"jumeau_ms": ours[k], "device_ms": device[v]} for k, v in names.items()}


def _sleep(work: Path) -> dict:
    """Both stagers on a simulated night that follows the real test hypnogram."""
    import sys

    sys.path.insert(0, str(HERE.parent))
    from tests.signals.night import simulate, write_psg

    from jumeau.signals.sleep import evaluate_night, hypnogram_epochs, read_hypnogram

    hypnogram = DATA / "edf" / "test_edfann.edf"
    start, onsets, durations, labels = read_hypnogram(hypnogram)
    psg = write_psg(
        work / "night.edf", simulate(list(hypnogram_epochs(onsets, durations, labels))), start
    )
    result = evaluate_night(psg, hypnogram, ("spectral", "yasa"))
    return {
        m: {k: r[k] for k in ("epochs", "accuracy", "kappa", "seconds")}
        for m, r in result["methods"].items()
        if "accuracy" in r
    }


if __name__ == "__main__":
    main()
