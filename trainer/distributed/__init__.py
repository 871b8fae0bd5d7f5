"""Several processes: the Accelerator and its collectives (`accelerator`), and FSDP2 sharding (`sharding`)."""
