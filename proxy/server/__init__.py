"""The operator's service: settings, the engine around the addon chain, workers, admin."""
