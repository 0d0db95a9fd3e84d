"""The environment: a codeset's MLproject, requirements, conda and python_env files
parsed into the spec whose hash is the image tag."""
