"""Case studies built on the pipeline: typographic attacks, counting, triage, transfer, metrics, the demo."""
