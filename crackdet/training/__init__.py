"""Training: the train job, the feature cache, checkpoint IO, loggers and Lightning callbacks."""
