"""The demo: a generated fleet streamed through Kafka, drift and a live swap, plots."""
