"""The files the trainer writes into its output folder (`medpeft.runs.layout` names the rest of a run folder)."""

METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"
