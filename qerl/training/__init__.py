"""One training step's parts: collect groups, score, update, metrics, resume state, settings, start-up checks."""
