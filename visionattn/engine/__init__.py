"""mmengine glue: registries, task models, hooks."""
