"""Orchestration: the `embedpipe` CLI and its config, and under it one folder per part:
batch/ (the run: pre-flight, prepass, driver, tasks on actors), inputs/ (listing and reading
shards, planning tasks), output/ (part files, markers, run state, fingerprint, status),
reindex/ (reusing vectors earlier outputs hold) and serve/ (the feature-extraction API)."""
