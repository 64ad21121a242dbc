"""The framework core every stage and reader needs: streams, the stage contract, registry, pipeline, orchestrator,
container."""
