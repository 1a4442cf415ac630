"""Millisecond scale: waveform storage built for zoom, and signal processing (ECG)."""
