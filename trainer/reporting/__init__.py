"""What a run writes and how it is read back: the event log of metrics.jsonl and the trackers (`events`, the
writer), a run folder as recorded (`records`, the reader), the HTML report and its plots, model and data cards,
and the sweep's page."""
