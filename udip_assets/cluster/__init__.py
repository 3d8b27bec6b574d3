"""Running steps on the engines users have: SLURM batch jobs through Dagster Pipes."""
