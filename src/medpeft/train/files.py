"""The files the trainer writes into its output folder (`medpeft.run_layout` names the rest of a run folder)."""

METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"
