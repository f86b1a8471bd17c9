"""What a person reads about a training run: the epoch line, report.md and curves.png
(`run_report`), metrics.jsonl and TensorBoard events (`metric_writer`)."""
