"""The builder step: plan, Dockerfile rendering, engines (docker, buildah, kaniko), the
engine-free builder, conda staging."""
