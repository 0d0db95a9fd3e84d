"""FuseML workflows: load and validate, resolve extensions, run locally, export to Tekton."""
