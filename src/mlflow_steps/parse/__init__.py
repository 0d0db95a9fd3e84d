"""Parsers for the files of a codeset: MLproject and environment files."""
