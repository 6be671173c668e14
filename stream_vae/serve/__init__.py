"""``stream-vae serve``: a stateless HTTP scoring endpoint (extra ``stream-vae[serve]``)."""
