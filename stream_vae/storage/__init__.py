"""Model versions on disk: the artifact format, the registry, exports, data files."""
