"""The codes and units of derived ECG features (shared by the feature writer and the twin, which
must not pay for importing the signal processing to read them)."""

FEATURE_CODES = {
    "hr": ("LOINC/8867-4", "/min"),
    "sdnn": ("JUMEAU/ECG/SDNN", "ms"),
    "rmssd": ("JUMEAU/ECG/RMSSD", "ms"),
    "pnn50": ("JUMEAU/ECG/pNN50", "%"),
    "lf": ("JUMEAU/ECG/LF", "ms2"),
    "hf": ("JUMEAU/ECG/HF", "ms2"),
    "lf_hf": ("JUMEAU/ECG/LF_HF", "1"),
    "pr": ("LOINC/8625-6", "ms"),
    "qrs": ("LOINC/8633-2", "ms"),
    "qt": ("LOINC/8634-8", "ms"),
    "qtc_bazett": ("LOINC/8636-3", "ms"),
    "qtc_fridericia": ("JUMEAU/ECG/QTcF", "ms"),
}

#: Where derived ECG features come from, and the scopes they summarise (``"<scope>; <lead>"`` in
#: their text): the per-record summary is the one observation a record adds to a clinical
#: variable's series (its 5-min windows and daily summary describe the same beats again).
ECG_SOURCE = "derived/ecg"
WINDOW_SCOPE, RECORD_SCOPE, DAY_SCOPE = "5-min window", "record", "day"


def is_series_observation(source: str | None, text_value: str | None) -> bool:
    """Whether an event counts once in a variable's series: any measurement, but of derived ECG
    features only the per-record summaries."""
    return source != ECG_SOURCE or (text_value or "").startswith(f"{RECORD_SCOPE};")


def series_observations():
    """:func:`is_series_observation` as a Polars filter, for columnar reads of the store."""
    import polars as pl

    return (pl.col("source") != ECG_SOURCE) | pl.col("text_value").str.starts_with(
        f"{RECORD_SCOPE};"
    )
