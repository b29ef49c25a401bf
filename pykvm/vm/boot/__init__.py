"""Guest loaders (flat binary, PVH ELF, Linux bzImage) and the guest memory layout."""
