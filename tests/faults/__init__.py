"""Fault injection: the service under replica churn, SIGKILL, broker restarts and poison."""
