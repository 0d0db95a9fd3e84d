"""What the tests share: servers, engines, registries, corpora and helpers."""
