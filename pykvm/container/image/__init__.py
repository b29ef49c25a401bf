"""The image side of containers: Describe (dockerfile), Package (build, layer,
store), Share (registry)."""
