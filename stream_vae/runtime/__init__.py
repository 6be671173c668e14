"""One live model: windows → forward pass → scores, and its swap."""
