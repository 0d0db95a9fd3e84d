"""The runtime step: run the codeset's MLflow project inside its image, output the model URL."""
