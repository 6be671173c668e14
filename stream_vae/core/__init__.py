"""Pure building blocks: records, per-series windows, the scaler, per-series state."""
