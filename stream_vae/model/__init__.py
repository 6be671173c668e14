"""The LSTM-VAE, its loss, and the detector that runs it (torch or ONNX Runtime)."""
