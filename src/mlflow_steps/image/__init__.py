"""OCI images: references, the registry client, deterministic layers, push, diff."""
