"""Everything that moves runs, torch-free: the registry, queue claims, the launcher, workers, executors, ingestion."""
