"""When to retrain and on what: drift, the clean reservoir, the policy, the job."""
