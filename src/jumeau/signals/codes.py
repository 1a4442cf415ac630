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
