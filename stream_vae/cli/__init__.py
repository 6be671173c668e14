"""The ``stream-vae`` command."""
