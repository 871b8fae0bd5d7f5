"""The training runtime: set-up and the step loop (`setup`, `loop`), what a run holds (`state`), the step plan and
learning-rate schedule (`schedule`), checkpoints and the weights in them (`checkpoint`, `weights`), when the
collapse hook runs during training and what its alerts do (`evaluation`), preemption, and the run folder's lock
(`run_folder`)."""
