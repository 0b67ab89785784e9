"""MLflow: runs (a run that outlives its server), retry, registry (the served model, logged
and registered by the publish stage alone)."""
