"""Architecture-specific vCPU boot state."""
